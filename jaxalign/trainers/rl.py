"""On-policy RL: `train_and_evaluate(config, workdir)` for objectives "ppo" and "grpo" (GRPO / RLOO).

One step, over `train.batch_size` prompts (× `grpo.group_size` samples each for GRPO):

  1. sample   the jitted, sharded sampler (`sampling.make_generate_fn`) runs on the train state's own
              policy parameters (no copy, no weight sync) at `rollout.temperature` (1.0 by default, so
              the behaviour policy is the policy itself);
  2. score    one jitted pass of forward passes (`rewards.make_score_fn`): the policy's log-probs of the
              sampled tokens (recomputed, not the sampler's: see there), the frozen reference's, the
              critic's values (PPO), the reward model's score (`reward.model_path`); and on the host the
              completions decoded and scored by `reward.function` (the environment reward, also what is
              trained on when there is no reward model) and `reward.check_fn` (accuracy);
  3. update   one jitted, donated call (`ppo.make_update_fn` / `grpo.make_update_fn`): advantages, then
              epochs × minibatches of optimiser updates, and the adaptive KL controller (PPO).

Around it: console / JSONL / TensorBoard metrics, a greedy evaluation on the held-out prompts
(`data.eval`) at step 0, every `train.eval_every` steps and at the end (env reward, accuracy, stop rate,
length, KL to the reference, reward-model score), orbax checkpoints of the train state (incl. β and the
rng) + the data position, resumed from automatically, and the policy exported in HF format at the end.
SIGTERM / SIGINT stop it after the current step with a checkpoint (exit code 75), and minibatch updates
with a non-finite loss or gradient are skipped, as in the offline loop (`preemption`).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxalign import checkpoints, models, plugins, registry, sampling, sharding
from jaxalign.checkpoints.orbax_state import StateCheckpointer, abstract_like
from jaxalign import data
from jaxalign.data import pipeline
from jaxalign.trainers import distributed, grpo, ppo, preemption, rewards, setup
from jaxalign.trainers.metrics_writer import MetricsWriter
from jaxalign.trainers.optim import make_optimizer
from jaxalign.trainers.validate import (
    ConfigError,
    _check_path,
    _fail,
    reject_other_objectives,
    validate_common,
)

RL_OBJECTIVES = {"ppo": ppo, "grpo": grpo}


class RLState(NamedTuple):
    step: jax.Array  # int32 scalar: rollout steps done (each is epochs × minibatches updates).
    params: Any  # {"policy": ..., "value": ... (PPO)}: trained together by one optimiser.
    opt_state: Any
    rng: jax.Array  # PRNG key data: sampling and minibatch shuffling derive from it, per step.
    kl_coef: jax.Array  # float32 scalar β of PPO's KL penalty (the adaptive controller's state).


# ----------------------------------------------------------------------------------------------------
# Config.
# ----------------------------------------------------------------------------------------------------
def algorithm(config):
    """The RL objective's module (`ppo` or `grpo`): its checks, update function and the few numbers the
    loop needs (group_size, updates_per_step, kl_coef, uses_reference, needs_old_logprobs, CRITIC)."""
    return RL_OBJECTIVES[config.objective]


def group_size(config):
    return algorithm(config).group_size(config.get(config.objective))


def updates_per_step(config):
    return algorithm(config).updates_per_step(config.get(config.objective))


def validate(config, num_devices, process_count=1):
    """Raises ConfigError on the first bad field; returns the mesh shape (data, fsdp, tensor)."""
    obj = config.objective
    if obj not in RL_OBJECTIVES:
        _fail("objective", obj, f"not an RL objective; expected one of {sorted(RL_OBJECTIVES)}")
    if obj not in config:
        _fail(obj, None, "missing sub-config")
    # `config.reward` here is where rewards come from (not the reward-model objective's sub-config).
    reject_other_objectives(config, [k for k in registry.names() if k != "reward"])
    mesh_shape = validate_common(config, num_devices, process_count)
    RL_OBJECTIVES[obj].validate(config.get(obj))
    if config.lora.enabled:
        _fail("lora.enabled", True, "LoRA is not supported by the RL trainers yet")
    if config.train.grad_accum_steps != 1:
        _fail(
            "train.grad_accum_steps",
            config.train.grad_accum_steps,
            f"RL splits a rollout with {obj}.num_minibatches instead; leave it 1",
        )

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

    rw = config.reward
    if not rw.model_path and not rw.function:
        _fail(
            "reward.function", rw.function, "set reward.function or reward.model_path (nothing to train on)"
        )
    _check_path("reward.model_path", rw.model_path, required=False)
    if rw.model_path:
        checkpoints.hf.check_hf_dir(rw.model_path)  # CheckpointError before the policy is loaded
    for f in ("function", "check_fn"):
        if rw[f]:
            try:
                plugins.resolve_fn(rw[f])
            except ValueError as e:
                _fail(f"reward.{f}", rw[f], str(e))
    if algorithm(config).CRITIC:
        _check_path("ppo.critic_path", config.ppo.critic_path, required=False)
        if config.ppo.critic_path:
            checkpoints.hf.check_hf_dir(config.ppo.critic_path)

    shards = mesh_shape[0] * mesh_shape[1]
    rows = config.train.batch_size * group_size(config)
    mb = config.get(obj).num_minibatches
    if rows % mb or (rows // mb) % shards:
        _fail(
            f"{obj}.num_minibatches",
            mb,
            f"must split the {rows} rollout rows into minibatches that divide by data × fsdp = {shards}",
        )
    return mesh_shape


def _overrides(config):
    m = config.model
    return dict(
        dtype=m.dtype,
        param_dtype=m.param_dtype,
        remat=m.remat,
        scan_layers=m.scan_layers,
        logits_chunk=m.logits_chunk,
    )


# ----------------------------------------------------------------------------------------------------
# Building a run.
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RLRun:
    config: ml_collections.ConfigDict
    mesh: Any
    tokenizer: Any
    model_config: Any
    ref_params: Any
    rm_params: Optional[Any]
    train_iter: Any
    eval_ds: Optional[Any]
    batch_sharding: Any
    generate: Callable  # (policy params, prompt_ids, prompt_segment_ids, rng) -> GenerateOutput
    generate_eval: Callable  # the same, greedy
    score: Callable  # rewards.make_score_fn, jitted
    update: Callable  # ppo/grpo update, jitted, state donated
    eval_logprobs: Callable  # (params, rollout) -> [R, N]
    eval_rm: Optional[Callable]  # (rm params, rollout) -> [R]
    reward_fn: Optional[Callable]
    check_fn: Optional[Callable]
    group: int  # samples per prompt
    eos_ids: tuple


def build(config, mesh):
    """Loads everything a run needs and jits its functions. Returns (RLRun, initial RLState)."""
    obj, m, d, r, rw = config.objective, config.model, config.data, config.rollout, config.reward
    hp = dict(config.get(obj).to_dict(), missing_eos_penalty=float(rw.missing_eos_penalty))
    tok = checkpoints.load_tokenizer(m.tokenizer or m.path, trust_remote_code=m.trust_remote_code)
    mcfg, policy_params = setup.load_model(config, mesh, "lm")
    if d.max_prompt_length + r.max_new_tokens > mcfg.max_position_embeddings:
        raise ConfigError(
            f"config.rollout.max_new_tokens={r.max_new_tokens}: data.max_prompt_length + "
            f"max_new_tokens exceeds the model's max_position_embeddings="
            f"{mcfg.max_position_embeddings}"
        )
    policy = models.Transformer(mcfg)
    params = {"policy": policy_params}
    # The frozen reference: a second copy with the policy's sharding (never donated, no gradient).
    ref_params = jax.tree.map(jnp.copy, policy_params)
    value_model = reward_model = rm_params = None
    algo = algorithm(config)
    if algo.CRITIC:
        critic = hp["critic_path"] or rw.model_path or m.path
        if critic:
            vcfg, params["value"] = checkpoints.load_hf_model(
                critic, mesh=mesh, head="score", **_overrides(config)
            )
        else:  # a randomly initialised policy (model.init): a randomly initialised critic of the same shape
            vcfg, params["value"] = setup.load_model(config, mesh, "score")
        value_model = models.ScalarHeadModel(vcfg)
    if rw.model_path:
        rcfg, rm_params = checkpoints.load_hf_model(rw.model_path, mesh=mesh, head="score", dtype=m.dtype)
        if rcfg.vocab_size != mcfg.vocab_size:
            raise ConfigError(
                f"config.reward.model_path={rw.model_path!r}: vocabulary {rcfg.vocab_size} differs "
                f"from the policy's {mcfg.vocab_size}; the reward model reads the policy's token ids"
            )
        reward_model = models.ScalarHeadModel(rcfg)

    common = dict(
        kind="prompt",
        tokenizer=tok,
        format=d.format,
        max_length=d.max_length,
        max_prompt_length=d.max_prompt_length,
        chat_template=d.chat_template,
    )
    train_ds = data.load(d.train, split="train", **common)
    train_iter = pipeline.BatchIterator(
        train_ds,
        config.train.batch_size,
        seed=d.shuffle_seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    eval_ds = data.load(d.eval, split="eval", **common) if d.eval else None

    total_updates = config.train.num_steps * updates_per_step(config)
    ocfg = ml_collections.ConfigDict(config.optimizer.to_dict())
    ocfg.warmup_steps = config.optimizer.warmup_steps * updates_per_step(config)  # warmup in rollout steps
    tx, schedule = make_optimizer(ocfg, total_updates)
    bs = sharding.batch_sharding(mesh)
    with jax.set_mesh(mesh):
        state = RLState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=jax.jit(tx.init)(params),
            rng=jax.random.key_data(jax.random.key(config.seed)),
            kl_coef=jnp.asarray(algo.kl_coef(hp), jnp.float32),
        )
    state_sh = jax.tree.map(lambda x: x.sharding, state)

    eos_ids = sampling.eos_ids_of(tok, _extra_eos(mcfg))
    gen = dict(
        max_new_tokens=r.max_new_tokens,
        eos_ids=eos_ids,
        pad_id=sampling.pad_id_of(tok),
        mesh=mesh,
        param_shardings=state_sh.params["policy"],
        cache_buckets=r.cache_buckets,
    )
    use_ref = algo.uses_reference(hp)
    score_fn = rewards.make_score_fn(
        policy,
        eos_ids,
        value_model=value_model,
        reward_model=reward_model,
        old_logprobs=algo.needs_old_logprobs(hp),
    )
    score = jax.jit(lambda p, ref, rm, ro: score_fn(p, ref if use_ref else None, rm, ro), out_shardings=bs)
    update_fn = algo.make_update_fn(policy, value_model, tx, hp, schedule=schedule, batch_sharding=bs)
    nan_steps = preemption.injected_nan_steps()
    if nan_steps:  # test-only: a NaN sequence reward at those steps, as a broken reward function gives
        inner = update_fn

        def update_fn(state, rollout):
            return inner(
                state,
                {**rollout, "score": rollout["score"] * preemption.nan_factor(state.step + 1, nan_steps)},
            )

    update = jax.jit(update_fn, in_shardings=(state_sh, bs), out_shardings=(state_sh, None), donate_argnums=0)
    run = RLRun(
        config=config,
        mesh=mesh,
        tokenizer=tok,
        model_config=mcfg,
        ref_params=ref_params,
        rm_params=rm_params,
        train_iter=train_iter,
        eval_ds=eval_ds,
        batch_sharding=bs,
        generate=sampling.make_generate_fn(
            policy, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, **gen
        ),
        generate_eval=sampling.make_generate_fn(policy, temperature=0.0, **gen),
        score=score,
        update=update,
        eval_logprobs=jax.jit(lambda p, ro: rewards.completion_logprobs(policy, p, ro)[0], out_shardings=bs),
        eval_rm=(
            jax.jit(lambda p, ro: rewards.reward_model_scores(reward_model, p, ro), out_shardings=bs)
            if reward_model is not None
            else None
        ),
        reward_fn=plugins.resolve_fn(rw.function) if rw.function else None,
        check_fn=plugins.resolve_fn(rw.check_fn) if rw.check_fn else None,
        group=group_size(config),
        eos_ids=eos_ids,
    )
    return run, state


def _extra_eos(mcfg):
    eos = mcfg.eos_token_id
    return tuple(eos) if isinstance(eos, (tuple, list)) else (() if eos is None else (int(eos),))


# ----------------------------------------------------------------------------------------------------
# One step, in three phases (separate so that benchmarks/rl_step_split.py can time them).
# ----------------------------------------------------------------------------------------------------
def _global(run, x):
    return jax.make_array_from_process_local_data(run.batch_sharding, np.asarray(x))


def rollout_key(state):
    """The step's sampling key: derived from the state's rng, so a resumed run samples the same."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), 1)


def sample(run, policy_params, batch, rng, greedy=False):
    """Prompts (this host's numpy batch) -> the rollout dict of global device arrays, and the host's answers.
    Each prompt is repeated `run.group` times (contiguous rows) unless `greedy` (evaluation)."""
    g = 1 if greedy else run.group
    answers = [a for a in batch["answer"] for _ in range(g)]
    ids, seg = (_global(run, np.repeat(batch[k], g, axis=0)) for k in ("prompt_ids", "prompt_segment_ids"))
    out = (run.generate_eval if greedy else run.generate)(policy_params, ids, seg, rng)
    return {"prompt_ids": ids, "prompt_segment_ids": seg, "tokens": out.tokens, "mask": out.mask}, answers


def host_scores(run, rollout, answers):
    """Decodes this host's rows and runs the Python reward / check functions on them. Returns
    ({"env_reward", "correct"}: this host's [R/hosts] numpy arrays, number of generated tokens overall)."""
    tokens, mask = rewards.gather((rollout["tokens"], rollout["mask"]))
    num_tokens = int(np.sum(mask))
    if run.reward_fn is None and run.check_fn is None:
        return {}, num_tokens
    texts = rewards.decode(run.tokenizer, rewards.local_rows(tokens), rewards.local_rows(mask))
    return rewards.host_rewards(texts, answers, run.reward_fn, run.check_fn), num_tokens


def combine(run, rollout, scored, host):
    """The rollout the update reads: samples + device scores + host scores (as global arrays) + `score`,
    the sequence reward trained on (the reward model's if there is one, else the function's)."""
    rollout = {**rollout, **scored, **{k: _global(run, v) for k, v in host.items()}}
    rollout["score"] = rollout["rm_score"] if "rm_score" in rollout else rollout["env_reward"]
    return rollout


def score(run, state, rollout, answers):
    """The score phase: forward passes on device, reward functions on the host. Returns (rollout with
    everything the update reads, generated tokens in the batch)."""
    scored = run.score(state.params, run.ref_params, run.rm_params, rollout)
    host, num_tokens = host_scores(run, rollout, answers)
    return combine(run, rollout, scored, host), num_tokens


def train_step(run, state, batch):
    """sample → score → update. Returns (state, device metrics, generated tokens)."""
    rollout, answers = sample(run, state.params["policy"], batch, rollout_key(state))
    rollout, num_tokens = score(run, state, rollout, answers)
    state, metrics = run.update(state, rollout)
    return state, metrics, num_tokens


# ----------------------------------------------------------------------------------------------------
# Evaluation and the loop.
# ----------------------------------------------------------------------------------------------------
def evaluate(run, params):
    """Greedy answers to every held-out prompt: env reward, accuracy, stop rate, length, KL to the reference
    (Σ_t log π - log π_ref over each answer, the k1 estimate at the policy's mode), reward-model score.
    Padding rows of the last batch are left out; every host returns the same numbers."""
    it = pipeline.BatchIterator(
        run.eval_ds,
        run.config.train.eval_batch_size,
        seed=0,
        shuffle=False,
        repeat=False,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    sums, count = collections.defaultdict(float), 0.0
    key = jax.random.key(0)  # unused by greedy decoding
    for batch in it:
        rollout, answers = sample(run, params["policy"], batch, key, greedy=True)
        lp, ref_lp = (run.eval_logprobs(p, rollout) for p in (params["policy"], run.ref_params))
        kl = jnp.sum(lp - ref_lp, axis=-1)
        dev = {
            "tokens": rollout["tokens"],
            "mask": rollout["mask"],
            "kl": kl,
            "stopped": rewards.stopped(rollout["tokens"], rollout["mask"], run.eos_ids),
        }
        if run.eval_rm is not None:
            dev["rm_score"] = run.eval_rm(run.rm_params, rollout)
        host = {k: rewards.local_rows(np.asarray(v)) for k, v in rewards.gather(dev).items()}
        scored = rewards.host_rewards(
            rewards.decode(run.tokenizer, host["tokens"], host["mask"]), answers, run.reward_fn, run.check_fn
        )
        values = {
            "completion/stop_rate": host["stopped"],
            "completion/length": host["mask"].sum(-1),
            "kl/sequence": host["kl"],
            "reward/env": scored.get("env_reward"),
            "reward/accuracy": scored.get("correct"),
            "reward/score": host.get("rm_score"),
        }
        w = np.asarray(batch["weight"], np.float64)  # 0 on the last batch's padding rows
        for name, v in values.items():
            if v is not None:
                sums[name] += float(np.sum(w * np.asarray(v, np.float64)))
        count += float(w.sum())
    order = (
        "reward/env",
        "reward/accuracy",
        "reward/score",
        "completion/stop_rate",
        "completion/length",
        "kl/sequence",
    )
    names = [k for k in order if k in sums]
    totals = np.asarray([sums[k] for k in names] + [count])
    if jax.process_count() > 1:  # each host scored its own rows: add the hosts' sums
        from jax.experimental import multihost_utils

        totals = multihost_utils.process_allgather(totals).reshape(-1, len(totals)).sum(0)
    return {k: float(totals[i] / max(totals[-1], 1.0)) for i, k in enumerate(names)}


def _mean_metrics(records):
    return {k: float(np.mean([r[k] for r in records])) for k in records[0]}


def train_and_evaluate(config, workdir, devices=None, stop_after=None):
    """Runs PPO or GRPO as configured; returns {"train": last logged metrics, "eval": last eval metrics,
    "eval_start": the step-0 eval (when the run started from scratch)}.

    `devices`: the devices to build the mesh over (default: all). `stop_after`: leave the loop after this
    step without a final checkpoint or export, as a crash would (resume tests use it).
    """
    distributed.maybe_initialize(config.distributed)
    devices = jax.devices() if devices is None else devices
    mesh = sharding.make_mesh(*validate(config, len(devices), jax.process_count()), devices=devices)
    is_chief = jax.process_index() == 0
    run, state = build(config, mesh)
    t = config.train
    final = {}
    with jax.set_mesh(mesh):
        ckpt = (
            StateCheckpointer(os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints)
            if workdir
            else None
        )
        meta = {}
        if ckpt and ckpt.latest_step() is not None:
            state, data_state, meta = ckpt.restore(abstract_like(state))
            run.train_iter.set_state(data_state)
            print(f"Resumed from {ckpt.directory} at step {int(state.step)}", flush=True)
        writer = MetricsWriter(workdir if is_chief else "", t.num_steps)
        start = int(state.step)
        n_params = sum(x.size for x in jax.tree.leaves(state.params["policy"]))
        pending, tokens = [], 0
        guard = preemption.Guard(t, meta=meta, is_chief=is_chief)  # SIGTERM / SIGINT handlers
        try:
            print(
                f"Training {config.objective} for {t.num_steps} steps ({n_params / 1e6:.2f}M policy parameters, "
                f"{run.train_iter.num_examples} prompts, {t.batch_size} × {run.group} rollouts per step)",
                flush=True,
            )
            if run.eval_ds is not None and start == 0:  # the starting point, to compare the end against
                final["eval_start"] = final["eval"] = writer.write(
                    0, evaluate(run, state.params), prefix="eval"
                )
            for step in range(start + 1, t.num_steps + 1):
                state, metrics, n = train_step(run, state, next(run.train_iter))
                pending.append(metrics)
                tokens += n
                decision = guard.after_step(step, metrics["optim/nonfinite"])
                stop = decision.stop and step < t.num_steps  # at the last step the run ends anyway
                if step % t.log_every == 0 or step == t.num_steps or stop:
                    final["train"] = writer.write(
                        step, {**_mean_metrics(jax.device_get(pending)), **guard.counts()}, tokens=tokens
                    )
                    pending, tokens = [], 0
                if (
                    run.eval_ds is not None
                    and not stop
                    and (step == t.num_steps or (t.eval_every and step % t.eval_every == 0))
                ):
                    final["eval"] = writer.write(step, evaluate(run, state.params), prefix="eval")
                if step == t.num_steps or decision.save:
                    guard.save(ckpt, step, state, run.train_iter.get_state(), {"objective": config.objective})
                if stop:
                    guard.stop(ckpt, step)  # raises Preempted: exit code 75
                if stop_after is not None and step >= stop_after:
                    break
            else:
                if (
                    workdir and t.export_hf
                ):  # every process calls it, as loop.py does (gathers sharded params)
                    path = os.path.join(workdir, "hf")
                    checkpoints.save_hf_model(
                        path, run.model_config, state.params["policy"], tokenizer=run.tokenizer
                    )
                    print(f"Exported Hugging Face checkpoint to {path}", flush=True)
        finally:
            guard.close()
            if ckpt:
                ckpt.close()
            writer.close()
    return final
