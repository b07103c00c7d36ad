"""On-policy RL as a batch source of the one training loop: objectives "ppo", "grpo" (GRPO / RLOO and
the GRPO family) and "online_dpo" (DPO on best-vs-worst pairs of the policy's own samples).

`build_run(config, mesh)` gives `trainers/loop.py` a run like any other objective's: the algorithm's loss
(`ppo.make_loss_fn` / `grpo.make_loss_fn`), and a batch source whose `next(state)` makes one rollout batch
from the policy being trained, over `train.batch_size` prompts (× `grpo.group_size` samples each):

  1. sample      the jitted, sharded sampler (`sampling.make_generate_fn`) runs on the train state's own
                 policy parameters (no copy, no weight sync) at `rollout.temperature` (1.0 by default, so
                 the behaviour policy is the policy itself);
  2. score       one jitted pass of forward passes (`rewards.make_score_fn`): the policy's log-probs of the
                 sampled tokens (recomputed, not the sampler's: see there), the frozen reference's, the
                 critic's values (PPO), the reward model's score (`reward.model_path`); and on the host the
                 completions decoded and scored by `reward.function` (the environment reward, also what is
                 trained on when there is no reward model or judge) and `reward.check_fn` (accuracy); for
                 online DPO with `reward.judge`, an LLM judge's round-robin scores of each prompt's n
                 answers (`eval.judge.round_robin_scores`), which are then what is trained on;
  3. advantages  the algorithm's `prepare` (jitted): GAE and the KL-penalised rewards (PPO, whose adaptive
                 β is this source's state, checkpointed with the data position) or group-relative
                 advantages (GRPO).

The loop's step then makes epochs × minibatches optimiser updates over the batch, with gradient
accumulation, adapters (LoRA: the policy's adapters are trained, the frozen base is the reference and the
sampler runs base + adapters), mixed precision, checkpointing and preemption handling as for every
objective. The evaluator answers the held-out prompts (`data.eval`) greedily: env reward, accuracy, stop
rate, length, KL to the reference, reward-model score.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
import types
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxalign import checkpoints, data, hosts, losses, models, plugins, registry, sampling, sharding
from jaxalign.data import batching, pipeline
from jaxalign.envs import episodes
from jaxalign.eval import judge as judge_lib
from jaxalign.lora import kinds
from jaxalign.sampling import scoring
from jaxalign.trainers import algorithm as algorithm_lib
from jaxalign.trainers import off_policy, preemption, rewards, setup
from jaxalign.trainers.validate import (
    ConfigError,
    _check_path,
    _fail,
    check_model_fits,
    check_objective,
    reject_other_objectives,
    validate_common,
)


# ----------------------------------------------------------------------------------------------------
# Config.
# ----------------------------------------------------------------------------------------------------
def algorithm(config):
    """The RL objective's `trainers.algorithm.Algorithm` record (named by its registry entry): its loss,
    advantages and the few numbers the loop needs."""
    return algorithm_lib.of(config.objective)


def group_size(config):
    return algorithm(config).group_size(config.get(config.objective))


def updates_per_step(config):
    return algorithm(config).updates_per_step(config.get(config.objective))


def validate(config, num_devices, process_count=1):
    """Raises ConfigError on the first bad field; returns the mesh shape (data, fsdp, tensor)."""
    obj = config.objective
    if obj not in registry.names("rl"):
        _fail("objective", obj, f"not an RL objective; expected one of {registry.names('rl')}")
    if obj not in config:
        _fail(obj, None, "missing sub-config")
    # `config.reward` here is where rewards come from (not the reward-model objective's sub-config).
    reject_other_objectives(config, [k for k in registry.names() if k != "reward"])
    n = config.mesh.rollout_devices
    if n < 0 or (n and n >= num_devices):
        _fail(
            "mesh.rollout_devices", n, f"must be in [0, {num_devices}) (the sampler's share of the devices)"
        )
    if n and process_count > 1:
        _fail("mesh.rollout_devices", n, "a separate sampler mesh runs on one process for now; leave it 0")
    if n and (config.train.batch_size * group_size(config)) % n:
        _fail(
            "mesh.rollout_devices",
            n,
            f"must divide the {config.train.batch_size * group_size(config)} rollout rows (they are split over it)",
        )
    mesh_shape = validate_common(config, num_devices - n, process_count)
    check_objective(config)  # the registry's per-field checks
    algorithm(config).validate(config.get(obj))

    r, d = config.rollout, config.data
    if r.max_new_tokens < 1:
        _fail("rollout.max_new_tokens", r.max_new_tokens, "must be >= 1")
    if d.max_prompt_length + r.max_new_tokens > d.max_length:
        _fail(
            "rollout.max_new_tokens",
            r.max_new_tokens,
            f"data.max_prompt_length + rollout.max_new_tokens must "
            f"be <= data.max_length={d.max_length} (the longest sequence)",
        )
    if not r.temperature > 0:
        _fail(
            "rollout.temperature",
            r.temperature,
            "must be > 0 (on-policy RL samples; 1.0 = the policy itself)",
        )
    if r.top_k < 0:
        _fail("rollout.top_k", r.top_k, "must be >= 0 (0 = off)")
    if not 0 < r.top_p <= 1:
        _fail("rollout.top_p", r.top_p, "must be in (0, 1]")
    if r.cache_buckets < 1:
        _fail("rollout.cache_buckets", r.cache_buckets, "must be >= 1")
    if r.max_staleness < 0:
        _fail("rollout.max_staleness", r.max_staleness, "must be >= 0 (0 = on-policy: no sampling ahead)")
    if r.max_staleness and r.reuse_sampler_logprobs:
        _fail(
            "rollout.reuse_sampler_logprobs",
            r.reuse_sampler_logprobs,
            f"takes π_old from the sampler, which with rollout.max_staleness={r.max_staleness} is older than "
            "the update's policy; unset one",
        )
    if r.is_correction not in losses.CORRECTIONS:
        _fail("rollout.is_correction", r.is_correction, f"expected one of {list(losses.CORRECTIONS)}")
    if not r.is_cap > 0:
        _fail("rollout.is_cap", r.is_cap, "must be > 0 (the truncated IS weight's cap C)")
    band = tuple(r.is_band)
    if len(band) != 2 or not 0 <= band[0] < band[1]:
        _fail(
            "rollout.is_band",
            band,
            "must be (α, β) with 0 <= α < β (IcePop keeps tokens with α <= ratio <= β)",
        )
    if obj == "grpo" and config.grpo.overlong_cache > r.max_new_tokens:
        _fail(
            "grpo.overlong_cache",
            config.grpo.overlong_cache,
            f"must be <= rollout.max_new_tokens={r.max_new_tokens} (the penalty's window is in the budget)",
        )

    rw = config.reward
    judge = rw.get("judge", "")
    if config.env.name:
        validate_env(config, n)
    elif not rw.model_path and not rw.function and not judge:
        _fail(
            "reward.function", rw.function, "set reward.function or reward.model_path (nothing to train on)"
        )
    _check_path("reward.model_path", rw.model_path, required=False)
    if rw.model_path:
        checkpoints.hf.check_hf_dir(rw.model_path)  # CheckpointError before the policy is loaded
        if not judge and checkpoints.hf.is_reward_checkpoint(rw.model_path) is False:  # (judge + RM: below)
            _fail(
                "reward.model_path",
                rw.model_path,
                "is a causal-LM checkpoint, not a reward model (*ForSequenceClassification with a score head); "
                "its score head would be random noise to train against (train one with configs/reward.py)",
            )
    if judge:
        if obj != "online_dpo":
            _fail(
                "reward.judge",
                judge,
                f"a judge labels only online_dpo's pairs; {obj} trains on a scalar reward per answer "
                "(reward.function or reward.model_path)",
            )
        if rw.model_path:
            _fail(
                "reward.judge",
                judge,
                f"and reward.model_path={rw.model_path!r} are both set; one labels the answers: unset one",
            )
        _check_path("reward.judge", judge)
        judge_lib.check_judge(judge)  # CheckpointError naming the directory
        judge_lib.check_template(
            rw.get("judge_template", judge_lib.DEFAULT_TEMPLATE), "reward.judge_template"
        )
    for f in ("function", "check_fn"):
        if rw[f] and not (f == "function" and config.env.name):
            try:
                plugins.resolve_fn(rw[f])
            except ValueError as e:
                _fail(f"reward.{f}", rw[f], str(e))
    if algorithm(config).critic:
        _check_path("ppo.critic_path", config.ppo.critic_path, required=False)
        if config.ppo.critic_path:
            checkpoints.hf.check_hf_dir(config.ppo.critic_path)

    shards = hosts.batch_shards(mesh_shape)
    rows = config.train.batch_size * algorithm(config).rows_per_prompt(config.get(obj))  # the update's rows
    mb = config.get(obj).num_minibatches
    if rows % mb or (rows // mb) % shards:
        _fail(
            f"{obj}.num_minibatches",
            mb,
            f"must split the {rows} rollout rows into minibatches that divide by data × fsdp = {shards}",
        )
    n = config.train.grad_accum_steps
    if (rows // mb) % (n * shards):
        _fail(
            "train.grad_accum_steps",
            n,
            f"must split each minibatch of {rows // mb} rollout rows into micro-batches that divide by "
            f"data × fsdp = {shards}",
        )
    return mesh_shape


def episode_width(config):
    """The completion part of a rollout row: one turn's tokens, or a multi-turn episode's turns and what
    the environment appends between them."""
    e, n = config.env, config.rollout.max_new_tokens
    return e.max_turns * n + (e.max_turns - 1) * e.max_env_tokens if e.name else n


def validate_env(config, rollout_devices):
    """`config.env`: multi-turn episodes (jaxalign/envs) run by GRPO / RLOO on the train mesh."""
    e, r, d = config.env, config.rollout, config.data
    if config.objective != "grpo":
        _fail(
            "env.name",
            e.name,
            f"multi-turn episodes train with objective 'grpo' for now, not {config.objective!r}",
        )
    if e.max_turns < 1:
        _fail("env.max_turns", e.max_turns, "must be >= 1")
    if e.max_env_tokens < 1:
        _fail("env.max_env_tokens", e.max_env_tokens, "must be >= 1")
    if r.max_staleness:
        _fail(
            "rollout.max_staleness", r.max_staleness, "multi-turn episodes are sampled on-policy for now: 0"
        )
    if rollout_devices:
        _fail(
            "mesh.rollout_devices", rollout_devices, "multi-turn episodes sample on the train mesh for now: 0"
        )
    if config.reward.model_path:
        _fail(
            "reward.model_path",
            config.reward.model_path,
            "the environment's rewards are trained on; unset it",
        )
    width = episode_width(config)
    if d.max_prompt_length + width > d.max_length:
        _fail(
            "data.max_length",
            d.max_length,
            f"must hold data.max_prompt_length + an episode's turns: env.max_turns × rollout.max_new_tokens "
            f"+ (env.max_turns - 1) × env.max_env_tokens = {width}",
        )
    args = dict(e.args.to_dict()) if hasattr(e.args, "to_dict") else dict(e.args)
    episodes.make_env(e.name, args)  # the class resolves and is made with its args (one line if not)


# ----------------------------------------------------------------------------------------------------
# The batch source: sample → score → advantages.
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Rollouts:
    """Everything that makes and scores rollouts; `next(state)` is the loop's batch source."""

    config: ml_collections.ConfigDict
    tokenizer: Any
    prompts: Any  # the prompt iterator (this host's rows)
    eval_ds: Optional[Any]
    batch_sharding: Any
    policy_tree: Callable  # trainable params -> the full policy tree (base + adapters under LoRA)
    ref_params: Any  # the frozen reference policy (the base under LoRA)
    rm_params: Optional[Any]
    generate: Callable  # (policy params, prompt_ids, prompt_segment_ids, rng) -> GenerateOutput
    generate_eval: Callable  # the same, greedy
    score_fn: Callable  # rewards.make_score_fn, jitted
    prepare: Callable  # the algorithm's advantages: (rollout, kl_coef) -> (batch, metrics, kl_coef), jitted
    eval_logprobs: Callable  # (policy params, rollout) -> [R, N]
    eval_rm: Optional[Callable]  # (rm params, rollout) -> [R]
    reward_fn: Optional[Callable]
    check_fn: Optional[Callable]
    group: int  # samples per prompt
    shared: bool  # `generate` takes each prompt once and samples it `group` times
    eos_ids: tuple
    pad_id: int
    kl_coef: float  # PPO's β (the adaptive controller's state); GRPO's fixed β
    judge: Optional[Any] = None  # online DPO's LLM judge (`eval.judge.load_judge`), or None
    judge_template: str = judge_lib.DEFAULT_TEMPLATE
    units: int = 0  # rollout.pack: the update's rows in this many packed units (see `pack`); 0 = no packing
    split_units: Optional[Callable] = None  # (batch, perm [U, R/U]) -> the batch in units (jitted)
    packed_rows: int = 0  # packed rows per unit so far (kept from growing back and forth: compilations)
    step: int = 0  # the train state's step at this rollout (seeds the rows' assignment to units)
    forward_frac: float = 1.0  # positions the forward passes run / the padded rows' (logged)
    max_staleness: int = 0  # rollout.max_staleness: rollouts sampled this many steps ahead (off_policy.py)
    behaviour_logprobs: bool = False  # keep the sampler's log-probs for the importance correction
    in_flight: collections.deque = dataclasses.field(default_factory=collections.deque)  # off_policy.InFlight
    host_step: Optional[int] = None  # the state's step as the host counts it (reading it would wait)
    sampler_mesh: Optional[Any] = (
        None  # mesh.rollout_devices > 0: the sampler's own mesh (else the train mesh)
    )
    sampler_sharding: Optional[Any] = None  # rows over the sampler's devices
    sync: Optional[Callable] = None  # the policy tree -> its copy on the sampler's devices
    sync_seconds: float = 0.0  # the last copy's time (logged as rollout/weight_sync_s)
    episodes: Optional[Any] = None  # config.env: multi-turn episodes (`envs.Episodes`), else one turn

    def next(self, state):
        """One rollout batch: (batch of global arrays, {"tokens", "flops"}, rollout metrics). On-policy
        (max_staleness = 0) it is sampled from the state's own policy; else it is the oldest rollout in
        flight, and the next one is launched from the state's policy first (see `off_policy`)."""
        # The step as the host counts it: int(state.step) would wait for the update in flight.
        self.step = int(state.step) if self.host_step is None else self.host_step + 1
        self.host_step = self.step
        if not self.max_staleness:
            item = self.launch(state, 0)
        else:
            if not self.in_flight:  # the first step (nothing sampled ahead yet): sample now
                self.in_flight.append(self.launch(state, 0))
            item = self.in_flight.popleft()
            collect(self, item)  # decode + Python rewards on the host while the device updates
            while len(self.in_flight) < self.max_staleness:  # sampled on device before this step's update
                self.in_flight.append(self.launch(state, len(self.in_flight) + 1))
        preemption.fault_point(self.step + 1, "sample")  # test-only (no-op unless asked); the loop's step
        rollout, num_tokens, perm = score(self, state.params, item.rollout, item.answers, item)
        preemption.fault_point(self.step + 1, "score")
        batch, metrics, kl_coef = self.prepare(rollout, jnp.float32(self.kl_coef))
        if perm is not None and self.split_units is not None:
            batch = self.split_units(batch, perm)
            metrics = {**metrics, "rollout/forward_frac": self.forward_frac}
        if self.max_staleness:
            metrics = {**metrics, "rollout/staleness": float(self.step - item.step)}
        if self.sampler_mesh is not None:
            metrics = {**metrics, "rollout/weight_sync_s": self.sync_seconds}
        metrics = {**metrics, **item.metrics}
        self.kl_coef = float(kl_coef)  # β for the next rollout
        return batch, {"tokens": num_tokens, "flops": 0.0}, metrics

    def launch(self, state, j):
        """Dispatches the sampling of the next prompts from the state's policy (the `j`-th launched at this
        step: its own key), without waiting for it."""
        key = rollout_key(state)
        key = jax.random.fold_in(key, j) if j else key  # the first: the on-policy run's key
        policy = self.policy_tree(state.params)
        if self.sync is not None:  # the sampler's own devices: copy the weights there, device to device
            jax.block_until_ready(policy)  # (the update that makes them runs first; the copy is timed alone)
            t0 = time.perf_counter()
            policy = jax.block_until_ready(self.sync(policy))
            self.sync_seconds = time.perf_counter() - t0
        if self.episodes is not None:
            return sample_episodes(self, policy, next(self.prompts), key)
        rollout, answers = sample(self, policy, next(self.prompts), key)
        return off_policy.InFlight(rollout, answers, self.step)

    def get_state(self):
        # packed_rows: a resumed run packs into the same shapes, hence the same sums (bit-equal resume).
        # in_flight: the rollouts sampled ahead (their prompts are already past in `prompts`).
        for item in self.in_flight:
            collect(self, item)
        return {
            "prompts": self.prompts.get_state(),
            "kl_coef": self.kl_coef,
            "packed_rows": self.packed_rows,
            "in_flight": [off_policy.encode(i, self.batch_sharding) for i in self.in_flight],
        }

    def set_state(self, state):
        self.prompts.set_state(state["prompts"])
        self.kl_coef = float(state["kl_coef"])
        self.packed_rows = int(state.get("packed_rows", 0))
        self.in_flight = collections.deque(
            off_policy.decode(d, self.batch_sharding) for d in state.get("in_flight", [])
        )
        self.host_step = None

    def close(self):
        pass


def build_run(config, mesh, rollout_devices=()):
    """Loads everything a run needs and jits the rollout functions. Returns a `setup.Run`. The sampler runs
    on `rollout_devices` (`mesh.rollout_devices`; its own mesh, weights replicated) when given, else on
    `mesh`."""
    obj, m, d, r, rw = config.objective, config.model, config.data, config.rollout, config.reward
    algo, hp = algorithm(config), dict(config.get(obj).to_dict())
    hp["missing_eos_penalty"] = float(rw.missing_eos_penalty)
    hp["max_new_tokens"] = int(r.max_new_tokens)
    hp["is_correction"], hp["is_cap"], hp["is_band"] = r.is_correction, r.is_cap, tuple(r.is_band)
    tok = checkpoints.load_tokenizer(m.tokenizer or m.path, trust_remote_code=m.trust_remote_code)
    # Vocabulary and positions (the prompt and the longest completion or episode), before the weights load.
    check_model_fits(config, tok, d.max_prompt_length + episode_width(config), "rollout.max_new_tokens")
    mcfg, policy_params = setup.load_model(config, mesh, "lm")
    e = config.env
    policy = models.Transformer(mcfg)
    params, frozen = {"policy": policy_params}, {}
    value_model = reward_model = rm_params = None
    if algo.critic:
        critic = hp["critic_path"] or rw.model_path or m.path
        if critic:
            vcfg, params["value"] = checkpoints.load_hf_model(
                critic, mesh=mesh, head="score", **setup.model_overrides(config)
            )
        else:  # a randomly initialised policy (model.init): a randomly initialised critic of the same shape
            vcfg, params["value"] = setup.load_model(config, mesh, "score")
        value_model = models.ScalarHeadModel(vcfg)
    lora_cfg = kinds.config_of(config)
    if lora_cfg is not None:
        # The policy's adapters are trained; its frozen base is the reference (adapters off) and part of
        # the step's `frozen` argument, so the weights exist once. A critic gets its own LoRA adapters
        # with its score head trained in full (PEFT's modules_to_save); under bottleneck adapters, which
        # do not train a score head, the critic is trained in full.
        for i, (name, model) in enumerate((("policy", policy), ("value", value_model))):
            if model is None or (name == "value" and kinds.kind_of(config) == "bottleneck"):
                continue
            rng = jax.random.key(config.seed + 1 + i)
            frozen[name] = params[name]
            params[name], cfg, stand_in = kinds.make(config, model, frozen[name], mesh, rng)
            if name == "policy":
                policy, lora_cfg = stand_in, cfg
            else:
                value_model, value_cfg = stand_in, cfg
        ref_params = frozen["policy"]
    else:
        # The frozen reference: a second copy with the policy's sharding (never donated, no gradient).
        ref_params = jax.tree.map(jnp.copy, policy_params)

    def full_tree(p, frozen):
        """The trainable tree -> the networks' full parameters (base + adapters where there are any)."""
        out = dict(p)
        if "policy" in frozen:
            out["policy"] = kinds.attach(lora_cfg, frozen["policy"], p["policy"])
        if "value" in frozen:
            out["value"] = kinds.attach(value_cfg, frozen["value"], p["value"])
        return out

    def policy_tree(p):
        return full_tree(p, frozen)["policy"]

    if rw.model_path:
        rcfg, rm_params = checkpoints.load_hf_model(rw.model_path, mesh=mesh, head="score", dtype=m.dtype)
        if rcfg.vocab_size != mcfg.vocab_size:
            raise ConfigError(
                f"config.reward.model_path={rw.model_path!r}: vocabulary {rcfg.vocab_size} differs "
                f"from the policy's {mcfg.vocab_size}; the reward model reads the policy's token ids"
            )
        reward_model = models.ScalarHeadModel(rcfg)
    judge = None
    if rw.get("judge"):
        shared = None  # the judge is the starting policy: the frozen reference's weights, not a second copy
        if m.path and os.path.realpath(os.path.expanduser(rw.judge)) == os.path.realpath(m.path):
            shared = types.SimpleNamespace(module=models.Transformer(mcfg), config=mcfg, params=ref_params)
        judge = judge_lib.load_judge(rw.judge, mesh=mesh, dtype=m.dtype, model=shared)
        judge_lib.check_fits(
            judge.tokenizer, judge.config.max_position_embeddings, rw.judge_template, "reward.judge_template"
        )

    common = dict(
        kind="prompt",
        tokenizer=tok,
        format=d.format,
        max_length=d.max_length,
        max_prompt_length=d.max_prompt_length,
        chat_template=d.chat_template,
        skip_bad_rows=d.skip_bad_rows,
    )
    train_ds = data.load(setup.data_paths(d.train), split="train", **common)
    prompts = pipeline.BatchIterator(
        train_ds,
        config.train.batch_size,
        seed=d.shuffle_seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    eval_ds = data.load(setup.data_paths(d.eval), split="eval", **common) if d.eval else None

    bs = sharding.batch_sharding(mesh)
    policy_shardings = jax.tree.map(lambda x: x.sharding, policy_tree(params))
    eos_ids = sampling.eos_ids_of(tok, _extra_eos(mcfg))
    gen = dict(
        max_new_tokens=r.max_new_tokens,
        eos_ids=eos_ids,
        pad_id=sampling.pad_id_of(tok),
        mesh=mesh,
        param_shardings=policy_shardings,
        cache_buckets=r.cache_buckets,
    )
    sampler_mesh = sampler_bs = sync = None
    sampler_gen = dict(gen)
    if rollout_devices:
        sampler_mesh = sharding.make_mesh(len(rollout_devices), 1, 1, devices=rollout_devices)
        sampler_bs = sharding.batch_sharding(sampler_mesh)
        replicated = jax.sharding.NamedSharding(sampler_mesh, jax.sharding.PartitionSpec())
        sampler_shardings = jax.tree.map(lambda _: replicated, policy_shardings)
        sampler_gen.update(mesh=sampler_mesh, param_shardings=sampler_shardings)

        def sync(p):  # trainer -> sampler: a device-to-device copy, no host round trip
            return jax.device_put(p, sampler_shardings)

    # A group's prompt is prefilled once for its G samples when the prompts alone split over the batch
    # axes (else the prompts are repeated first).
    shared = config.train.batch_size % hosts.batch_shards(sampler_mesh or mesh) == 0
    use_ref = algo.uses_reference(hp)
    score_fn = rewards.make_score_fn(
        policy,
        eos_ids,
        value_model=value_model,
        reward_model=reward_model,
        old_logprobs=algo.needs_old_logprobs(hp) and not r.get("reuse_sampler_logprobs", False),
    )
    units = 0
    if r.get("pack", True):
        # The update's rows are packed in units that minibatches and micro-batches never split: rows /
        # (minibatches × micro-batches × batch shards), halved while a unit keeps >= 16 rows.
        rows = config.train.batch_size * algo.rows_per_prompt(config.get(obj)) if algo.packs else 0
        units = algo.num_minibatches(hp) * config.train.grad_accum_steps * hosts.batch_shards(mesh)
        while rows and (rows // units) % 2 == 0 and rows // units >= 32:
            units *= 2
        if not algo.packs or algo.epochs(hp) > 1:  # several epochs reshuffle rows: the padded rows
            units = 0
    source = Rollouts(
        config=config,
        tokenizer=tok,
        prompts=prompts,
        eval_ds=eval_ds,
        batch_sharding=bs,
        policy_tree=policy_tree,
        ref_params=ref_params,
        rm_params=rm_params,
        generate=sampling.make_generate_fn(
            policy,
            temperature=r.temperature,
            top_k=r.top_k,
            top_p=r.top_p,
            num_samples=group_size(config) if shared else 1,
            **sampler_gen,
        ),
        generate_eval=sampling.make_generate_fn(policy, temperature=0.0, **gen),
        score_fn=jax.jit(
            lambda p, ref, rm, ro: score_fn(full_tree(p, frozen), ref if use_ref else None, rm, ro),
            out_shardings=bs,
        ),
        prepare=jax.jit(lambda ro, beta: algo.prepare(ro, beta, hp), out_shardings=(bs, None, None)),
        eval_logprobs=jax.jit(lambda p, ro: scoring.completion_logprobs(policy, p, ro)[0], out_shardings=bs),
        eval_rm=(
            jax.jit(lambda p, ro: scoring.reward_model_scores(reward_model, p, ro), out_shardings=bs)
            if reward_model is not None
            else None
        ),
        reward_fn=plugins.resolve_fn(rw.function) if rw.function else None,
        check_fn=plugins.resolve_fn(rw.check_fn) if rw.check_fn else None,
        group=group_size(config),
        shared=shared,
        eos_ids=eos_ids,
        pad_id=sampling.pad_id_of(tok),
        kl_coef=algo.kl_coef(hp),
        judge=judge,
        judge_template=rw.get("judge_template", judge_lib.DEFAULT_TEMPLATE),
        units=units,
        split_units=jax.jit(scoring.split_units, out_shardings=bs) if algo.packs else None,
        max_staleness=int(r.max_staleness),
        sampler_mesh=sampler_mesh,
        sampler_sharding=sampler_bs,
        sync=sync,
        behaviour_logprobs=bool(r.max_staleness) and algo.corrects,
    )
    if e.name:
        source.episodes = episodes.Episodes.build(
            config,
            policy,
            tok,
            mesh,
            bs,
            group=source.group,
            shared=shared,
            eos_ids=eos_ids,
            pad_id=source.pad_id,
        )

    inner = algo.make_loss_fn(policy, value_model, hp)

    def loss_fn(p, fz, mb):  # adapters on their frozen bases (the step's `frozen`), as offline
        return inner(full_tree(p, fz or {}), fz, mb)

    ocfg = ml_collections.ConfigDict(config.optimizer.to_dict())
    ocfg.warmup_steps = config.optimizer.warmup_steps * updates_per_step(config)  # warm-up in rollout steps
    return setup.Run(
        model=policy,
        model_config=mcfg,
        head="lm",
        params=params,
        ref_params=frozen or None,
        tokenizer=tok,
        loss_fn=loss_fn,
        batches=source,
        evaluate=(lambda p: evaluate(source, p)) if eval_ds is not None else None,
        batch_sharding=bs,
        optimizer_config=ocfg,
        total_updates=config.train.num_steps * updates_per_step(config),
        summary=(
            f"{prompts.num_examples} prompts, {config.train.batch_size} × {source.group} rollouts per step"
            + (f", labelled by the judge {rw.judge}" if judge is not None else "")
            + f"; sampler: {engine_summary(config, source, mesh)}"
            + off_policy.describe(config)
        ),
        epochs=algo.epochs(hp),
        num_minibatches=algo.num_minibatches(hp),
        lora_config=lora_cfg,
        export_params=lambda p: p["policy"],
        export_base=lambda fz: fz["policy"],
    )


def engine_summary(config, src, mesh):
    """What the start-up line says of the rollout engine: cache, stages, prompt sharing, forward layout."""
    r = config.rollout
    if src.episodes is not None:
        e = config.env
        return (
            f"multi-turn episodes of {e.name} (up to {e.max_turns} turns of {r.max_new_tokens} tokens, "
            f"{e.max_env_tokens} appended tokens between), each turn decoded on the KV of the turns before "
            "(only appended tokens prefilled: env/fed_tokens vs env/context_tokens)"
            + (f", each prompt prefilled once for its {src.group} samples" if src.shared else "")
            + (f"; forward passes padded / packed / shared-prompt ({src.units} units)" if src.units else "")
        )
    rows = config.train.batch_size * src.group
    plan = sampling.stages(
        config.data.max_prompt_length,
        r.max_new_tokens,
        rows,
        cache_buckets=r.cache_buckets,
        shards=hosts.batch_shards(src.sampler_mesh or mesh),
    )
    sizes = "→".join(dict.fromkeys(str(s.rows) for s in plan))  # the batch sizes, in order
    where = (
        f" on its own {src.sampler_mesh.size} devices (weights copied device to device each step)"
        if src.sampler_mesh is not None
        else ""
    )
    return (
        f"slot KV cache of {plan[-1].slots} slots{where}, rows {sizes} as they finish"
        + (f", each prompt prefilled once for its {src.group} samples" if src.shared else "")
        + (
            f"; forward passes padded / packed / shared-prompt, whichever runs fewest positions ({src.units} units)"
            if src.units
            else "; forward passes on padded rows"
        )
    )


def _extra_eos(mcfg):
    eos = mcfg.eos_token_id
    return tuple(eos) if isinstance(eos, (tuple, list)) else (() if eos is None else (int(eos),))


# ----------------------------------------------------------------------------------------------------
# The phases (separate so that benchmarks/rl_step_split.py can time them).
# ----------------------------------------------------------------------------------------------------
def rollout_key(state):
    """The step's sampling key: derived from the state's rng, so a resumed run samples the same."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), 1)


def sample(src, policy_params, batch, rng, greedy=False):
    """Prompts (this host's numpy batch) -> the rollout dict of global device arrays on the train mesh, and
    the host's answers. Each prompt is repeated `src.group` times (contiguous rows) unless `greedy`
    (evaluation). `policy_params`: on the sampler's devices (`src.sync`) unless `greedy` (the train mesh)."""
    g = 1 if greedy else src.group
    answers = [a for a in batch["answer"] for _ in range(g)]
    keys = ("prompt_ids", "prompt_segment_ids")
    repeated = [np.repeat(batch[k], g, axis=0) for k in keys]
    ids, seg = (hosts.to_global(x, src.batch_sharding) for x in repeated)
    if greedy:
        out = src.generate_eval(policy_params, ids, seg, rng)
    else:
        on = src.sampler_sharding or src.batch_sharding
        if src.shared:  # each prompt once: the sampler prefills it once for its g rows
            prompts = [hosts.to_global(batch[k], on) for k in keys]
        elif src.sampler_mesh is not None:
            prompts = [hosts.to_global(x, on) for x in repeated]
        else:
            prompts = [ids, seg]
        if src.sampler_mesh is None:
            out = src.generate(policy_params, *prompts, rng)
        else:  # on the sampler's devices; the outputs are copied to the train mesh (device to device)
            with jax.set_mesh(src.sampler_mesh):
                out = src.generate(policy_params, *prompts, jax.device_put(rng, _replicated(on)))
            out = jax.device_put(out, src.batch_sharding)
    rollout = {"prompt_ids": ids, "prompt_segment_ids": seg, "tokens": out.tokens, "mask": out.mask}
    if not greedy and src.config.rollout.get("reuse_sampler_logprobs", False):
        rollout["old_logprobs"] = out.model_logprobs  # π_θ_old from the sampler, no scoring pass for it
    if not greedy and src.behaviour_logprobs:
        rollout["behaviour_logprobs"] = out.model_logprobs  # μ of a stale rollout's importance correction
    return rollout, answers


def sample_episodes(src, policy_params, batch, rng, greedy=False):
    """Multi-turn episodes of `config.env` for the prompts (`envs.Episodes.run`) -> an `off_policy.InFlight`
    already collected: its rollout (global arrays, `context` marking the environment's tokens), gathered
    rows, host scores (the episodes' summed rewards, the check on their last turns) and metrics."""
    eb = src.episodes.run(policy_params, batch, rng, greedy=greedy)
    local = {
        "prompt_ids": eb.prompt_ids,
        "prompt_segment_ids": eb.prompt_segment_ids,
        "tokens": eb.tokens,
        "mask": eb.mask,
        "context": eb.context,
    }
    if not greedy and src.config.rollout.get("reuse_sampler_logprobs", False):
        local["old_logprobs"] = eb.model_logprobs
    rollout = hosts.to_global(local, src.batch_sharding)
    item = off_policy.InFlight(rollout, None, src.step)
    # Packing reads which tokens are real: the context, the environment's tokens included.
    item.gathered = hosts.gather(
        tuple(rollout[k] for k in ("prompt_ids", "prompt_segment_ids", "tokens", "context"))
    )
    item.host = {"env_reward": eb.reward}
    if eb.correct is not None:
        item.host["correct"] = eb.correct
    item.num_tokens = int(hosts.sum_over_hosts(np.asarray([eb.num_tokens], np.float64))[0])
    item.metrics = eb.metrics
    return item


def _replicated(named_sharding):
    return jax.sharding.NamedSharding(named_sharding.mesh, jax.sharding.PartitionSpec())


def host_scores(src, rollout, answers, tokens=None, mask=None):
    """Decodes this host's rows and runs the Python reward / check functions on them, and the judge (if
    any) on every row. Returns ({"env_reward", "correct", "judge_score"}: this host's [R/hosts] numpy
    arrays, number of generated tokens overall). `tokens`, `mask`: the rollout's, gathered, if at hand."""
    if tokens is None:
        tokens, mask = hosts.gather((rollout["tokens"], rollout["mask"]))
    num_tokens = int(np.sum(mask))
    out = {}
    if src.reward_fn is not None or src.check_fn is not None:
        texts = rewards.decode(src.tokenizer, hosts.local_rows(tokens), hosts.local_rows(mask))
        out = rewards.host_rewards(texts, answers, src.reward_fn, src.check_fn)
    if src.judge is not None:
        out["judge_score"] = hosts.local_rows(judge_scores(src, rollout, tokens, mask))
    return out, num_tokens


def judge_scores(src, rollout, tokens, mask):
    """The judge's round-robin score of every row among its prompt's `src.group` answers
    (`eval.judge.round_robin_scores`): [R] float32, the same on every host (each host builds every judge
    input; the judge's forward is sharded over the batch axes like the rollout)."""
    ids, seg = hosts.gather((rollout["prompt_ids"], rollout["prompt_segment_ids"]))
    n, j = src.group, src.judge
    out = judge_lib.round_robin_scores(
        j.module,
        j.params,
        j.tokenizer,
        rewards.questions(src.tokenizer, ids[::n], seg[::n]),
        rewards.decode(src.tokenizer, tokens, mask, keep_special=False),
        n,
        template=src.judge_template,
        batch_size=int(tokens.shape[0]),  # the rollout's rows: divisible by the batch axes
        batch_sharding=src.batch_sharding,
        verdict_fn=j.fn,
    )
    return out["score"].astype(np.float32)


def combine(src, rollout, scored, host):
    """The rollout the update reads: samples + device scores + host scores (as global arrays) + `score`,
    the sequence reward trained on (the judge's if there is one, else the reward model's if there is one,
    else the function's)."""
    rollout = {**rollout, **scored, **hosts.to_global(host, src.batch_sharding)}
    for k in ("judge_score", "rm_score", "env_reward"):
        if k in rollout:
            rollout["score"] = rollout[k]
            break
    return rollout


def pack(src, rollout, prompt_ids, prompt_segment_ids, tokens, mask):
    """Assigns the rollout's rows to `src.units` units at random (seeded by the config's seed and the step:
    a resumed run draws the same; whole groups per unit when units hold whole groups) and picks, by the
    positions it runs, the layout of the forward passes (`scoring.completion_outputs`): padded rows,
    packed rows (`data.batching.pack_rollout`, each unit packed on its own) or each group's prompt once
    (`scoring.grouped_outputs`). The update takes its minibatches and micro-batches as consecutive whole
    units (`trainers.step`), so which rows train together depends on the seed and the step alone, not on
    the mesh or the layout. Returns (rollout, perm [U, R/U])."""
    (r, n), p, g, u = mask.shape, prompt_ids.shape[1], src.group, src.units
    rng = np.random.default_rng([src.config.seed, src.step])
    whole = (r // u) % g == 0
    if whole:
        perm = (rng.permutation(r // g)[:, None] * g + np.arange(g)).reshape(u, r // u)
    else:
        perm = rng.permutation(r).reshape(u, r // u)
    perm = perm.astype(np.int32)
    layout, rows = batching.pack_rollout(
        prompt_ids, prompt_segment_ids, tokens, mask, list(perm), src.packed_rows, pad_id=src.pad_id
    )
    t = p + n - 1
    cost = {"padded": r * t, "packed": u * rows * t}
    if whole and src.shared and not algorithm(src.config).critic:
        cost["shared"] = (r // g) * (p - 1) + r * n
    best = min(cost, key=cost.get)
    src.forward_frac = cost[best] / cost["padded"]
    if best == "padded":
        return rollout, perm
    if best == "packed":
        src.packed_rows = rows
    else:
        layout = {"shared_prompt_ids": prompt_ids[::g], "shared_prompt_segment_ids": prompt_segment_ids[::g]}
    local = {k: hosts.local_rows(v) for k, v in layout.items()}
    return {**rollout, **hosts.to_global(local, src.batch_sharding)}, perm


def collect(src, item, host=True):
    """The host's part of scoring an `off_policy.InFlight` rollout, each once: every row gathered to numpy
    (`item.gathered`), then (`host`) decoded and scored by the Python functions / the judge (`host_scores`:
    `item.host`, `item.num_tokens`)."""
    if item.gathered is None:
        item.gathered = hosts.gather(tuple(item.rollout[k] for k in off_policy.GATHERED))
    if host and item.host is None:
        item.host, item.num_tokens = host_scores(src, item.rollout, item.answers, *item.gathered[2:])
        item.answers = None


def score(src, params, rollout, answers, item=None):
    """The score phase: forward passes on device, reward functions on the host (already done for an
    `item` collected ahead; else while the device runs the forward passes). `params`: the trainable tree.
    Returns (rollout with everything the advantages read, generated tokens in the batch, the rows' units
    [U, R/U] when the rollout is packed, else None)."""
    item = item or off_policy.InFlight(rollout, answers, src.step)
    collect(src, item, host=False)
    perm = None
    if src.units:
        rollout, perm = pack(src, rollout, *item.gathered)
    scored = src.score_fn(params, src.ref_params, src.rm_params, rollout)
    collect(src, item)
    return combine(src, rollout, scored, item.host), item.num_tokens, perm


# ----------------------------------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------------------------------
EVAL_METRICS = (
    "reward/env",
    "reward/accuracy",
    "reward/score",
    "completion/stop_rate",
    "completion/length",
    "kl/sequence",
)


def evaluate(src, params):
    """Greedy answers to every held-out prompt: env reward, accuracy, stop rate, length, KL to the reference
    (Σ_t log π - log π_ref over each answer, the k1 estimate at the policy's mode), reward-model score.
    Padding rows of the last batch are left out; every host returns the same numbers."""
    it = pipeline.BatchIterator(
        src.eval_ds,
        src.config.train.eval_batch_size,
        seed=0,
        shuffle=False,
        repeat=False,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    policy = src.policy_tree(params)
    sums, count = collections.defaultdict(float), 0.0
    key = jax.random.key(0)  # unused by greedy decoding
    for batch in it:
        w = np.asarray(batch["weight"], np.float64)  # 0 on the last batch's padding rows
        if src.episodes is not None:
            item = sample_episodes(src, policy, batch, key, greedy=True)
            rollout, answers = item.rollout, None
            for name, v in item.metrics.items():  # the batch's means (padding rows included)
                sums[f"episodes:{name}"] += v * float(w.sum())
        else:
            rollout, answers = sample(src, policy, batch, key, greedy=True)
        lp, ref_lp = (src.eval_logprobs(p, rollout) for p in (policy, src.ref_params))
        dev = {
            "tokens": rollout["tokens"],
            "mask": rollout["mask"],
            "kl": jnp.sum(lp - ref_lp, axis=-1),
            "stopped": scoring.stopped(rollout["tokens"], rollout["mask"], src.eos_ids),
        }
        if src.eval_rm is not None:
            dev["rm_score"] = src.eval_rm(src.rm_params, rollout)
        host = {k: hosts.local_rows(np.asarray(v)) for k, v in hosts.gather(dev).items()}
        if src.episodes is not None:
            scored = item.host
        else:
            scored = rewards.host_rewards(
                rewards.decode(src.tokenizer, host["tokens"], host["mask"]),
                answers,
                src.reward_fn,
                src.check_fn,
            )
        values = {
            "completion/stop_rate": host["stopped"],
            "completion/length": host["mask"].sum(-1),
            "kl/sequence": host["kl"],
            "reward/env": scored.get("env_reward"),
            "reward/accuracy": scored.get("correct"),
            "reward/score": host.get("rm_score"),
        }
        for name, v in values.items():
            if v is not None:
                sums[name] += float(np.sum(w * np.asarray(v, np.float64)))
        count += float(w.sum())
    names = [k for k in EVAL_METRICS if k in sums] + sorted(k for k in sums if k.startswith("episodes:"))
    totals = hosts.sum_over_hosts(np.asarray([sums[k] for k in names] + [count]))  # each host its rows
    return {k.removeprefix("episodes:"): float(totals[i] / max(totals[-1], 1.0)) for i, k in enumerate(names)}
