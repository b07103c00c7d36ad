"""On-policy RL (PPO, GRPO, RLOO): KL 0 before the first update, the reward goes up on a tiny task, the
sharded step equals the single-device one, resume equals an uninterrupted run, configs validate, CLI runs.

The tiny task: a randomly initialised 1-layer model on the embedded tokenizer and prompts, rewarded by the
fraction of digit characters in its completion (dense, learnable in a few steps from random init).
"""

import importlib
import json
import re
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import sharding
from jaxalign.trainers import loop, rl
from jaxalign.trainers.validate import ConfigError

from jaxalign import defaults as common

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def digit_fraction(answer, completion):
    """Synthetic reward: the fraction of the completion's characters that are digits."""
    del answer
    return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)


TINY = dict(
    model_type="llama",
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=64,
    max_position_embeddings=64,
    tie_word_embeddings=True,
)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A random tiny model saved as an HF directory (loading it compiles nothing, unlike a random init
    per test) and the first 64 embedded training prompts."""
    from jaxalign import checkpoints, models
    from jaxalign.data import embedded

    root = tmp_path_factory.mktemp("tiny_rl")
    tok = embedded.load_tokenizer()
    mcfg = models.ModelConfig.from_hf(
        dict(
            TINY,
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    params = models.init_params(mcfg, jax.random.key(0))
    checkpoints.save_hf_model(str(root / "model"), mcfg, params, tokenizer=tok)
    with open(common.asset("prompts_train.jsonl")) as f, open(root / "prompts.jsonl", "w") as out:
        out.writelines(f.readlines()[:64])
    return {"model": str(root / "model"), "prompts": str(root / "prompts.jsonl")}


def tiny_config(tiny, objective, steps=2, variant=None, **changes):
    c = importlib.import_module(f"configs.{objective}").get_config(variant)
    with c.unlocked():
        c.model.path = tiny["model"]
        c.data.train = tiny["prompts"]
        c.data.eval = ""
        c.data.max_prompt_length = 32
        c.data.max_length = 40
        c.rollout.max_new_tokens = 8
        c.reward.model_path = ""
        c.train.batch_size = 8
        c.train.num_steps = steps
        c.train.log_every = 1
        c.train.export_hf = False
        c.optimizer.learning_rate = 1e-2
        c.optimizer.warmup_steps = 0
        c.optimizer.schedule = "constant"
        if objective == "grpo":
            c.grpo.group_size = 4
        for path, value in changes.items():
            node = c
            *parents, leaf = path.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return c


def build(config, devices=None, reward_fn=digit_fraction):
    """(mesh, run, state, jitted step) of the one loop on `devices` (default one)."""
    devices = devices or jax.devices()[:1]
    mesh = sharding.make_mesh(*rl.validate(config, len(devices)), devices=devices)
    with jax.set_mesh(mesh):
        run, state, step = loop.build(config, mesh)
    run.batches.reward_fn = reward_fn
    return mesh, run, state, step


def run_steps(config, steps, devices=None, reward_fn=digit_fraction):
    """Builds the run on `devices` (default one) and does `steps` train steps of the one loop (rollout
    batch from the source, then the update); returns the metrics list, the final state and the run."""
    mesh, run, state, step = build(config, devices, reward_fn)
    out = []
    with jax.set_mesh(mesh):
        for _ in range(steps):
            state, metrics, _ = loop.one_step(run, step, state)
            out.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return out, state, run


def _initial_params(tiny):
    from jaxalign import checkpoints

    return checkpoints.load_hf_model(tiny["model"])[1]


def _relative_difference(params, ref_params, start):
    """‖θ − θ_ref‖ / ‖θ_ref − θ_0‖ over the policy's parameters (global norms)."""
    a, b = (jax.tree.leaves(jax.device_get(p["policy"])) for p in (params, ref_params))
    s = jax.tree.leaves(jax.device_get(start))
    diff = np.sqrt(sum(np.sum((np.float64(x) - y) ** 2) for x, y in zip(a, b)))
    moved = np.sqrt(sum(np.sum((np.float64(y) - z) ** 2) for y, z in zip(b, s)))
    assert moved > 0
    return diff / moved


# ----------------------------------------------------------------------------------------------------
# Configs.
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ppo", "grpo"])
def test_config_loads_locked_and_valid(name):
    c = importlib.import_module(f"configs.{name}").get_config()
    assert c.is_locked and c.objective == name
    with pytest.raises(AttributeError):
        c.rollout.no_such_field = 1
    assert rl.validate(c, num_devices=8) == (1, 8, 1)
    assert rl.validate(c, num_devices=1) == (1, 1, 1)


@pytest.mark.parametrize(
    "name,field,value,match",
    [
        ("grpo", "grpo.group_size", 1, r"config\.grpo\.group_size=1"),
        ("grpo", "grpo.advantage", "ppo", r"config\.grpo\.advantage='ppo'"),
        ("grpo", "grpo.num_minibatches", 3, r"config\.grpo\.num_minibatches=3"),
        ("ppo", "ppo.kl_estimator", "k9", r"config\.ppo\.kl_estimator='k9'"),
        ("ppo", "ppo.gae_lambda", 1.5, r"config\.ppo\.gae_lambda=1\.5"),
        ("ppo", "rollout.temperature", 0.0, r"config\.rollout\.temperature=0\.0"),
        ("ppo", "rollout.max_new_tokens", 64, r"config\.rollout\.max_new_tokens=64"),
        ("ppo", "reward.function", "jaxalign.data.embedded:no_such_fn", r"config\.reward\.function="),
        ("ppo", "train.grad_accum_steps", 3, r"config\.train\.grad_accum_steps=3"),
        ("grpo", "rollout.max_staleness", -1, r"config\.rollout\.max_staleness=-1"),
        ("grpo", "rollout.is_correction", "is", r"config\.rollout\.is_correction='is'"),
        ("ppo", "rollout.is_cap", 0.0, r"config\.rollout\.is_cap=0\.0"),
        ("grpo", "rollout.is_band", (2.0, 1.0), r"config\.rollout\.is_band=\(2\.0, 1\.0\)"),
    ],
)
def test_bad_fields_are_named(name, field, value, match):
    c = importlib.import_module(f"configs.{name}").get_config()
    with c.unlocked():
        section, leaf = field.split(".")
        c[section][leaf] = value
    with pytest.raises(ConfigError, match=match):
        rl.validate(c, num_devices=8)


def test_no_reward_source_is_an_error():
    c = importlib.import_module("configs.ppo").get_config()
    with c.unlocked():
        c.reward.model_path, c.reward.function = "", ""
    with pytest.raises(ConfigError, match=r"config\.reward\.function=''"):
        rl.validate(c, num_devices=1)


# ----------------------------------------------------------------------------------------------------
# Steps on the tiny task.
# ----------------------------------------------------------------------------------------------------
def _improves(metrics, key="reward/env", k=3, margin=0.05):
    before = np.mean([m[key] for m in metrics[:k]])
    after = np.mean([m[key] for m in metrics[-k:]])
    assert after > before + margin, (before, after, [round(m[key], 3) for m in metrics])


@pytest.mark.slow
def test_ppo_raises_the_reward(tiny):
    c = tiny_config(
        tiny,
        "ppo",
        **{"ppo.kl_coef": 0.01, "ppo.adaptive_kl": True, "ppo.kl_target": 1.0, "train.batch_size": 16},
    )
    metrics, _, run = run_steps(c, steps=20)  # 12 steps: +0.04 on the 2026-12-06 tokenizer; 20: 0.04 -> 0.36
    _improves(metrics)
    assert metrics[-1]["kl/coef"] != pytest.approx(0.01)  # the adaptive controller moved β
    assert run.batches.kl_coef == pytest.approx(metrics[-1]["kl/coef"], rel=0.3)


@pytest.mark.slow
@pytest.mark.parametrize("advantage", ["grpo", "rloo"])
def test_grpo_and_rloo_raise_the_reward(tiny, advantage):
    c = tiny_config(
        tiny, "grpo", **{"grpo.advantage": advantage, "grpo.group_size": 4, "train.batch_size": 8}
    )
    # 12 steps gave +0.048 for RLOO with the per-sequence sampler of 2026-12-07 (short of the 0.05 margin).
    metrics, _, _ = run_steps(c, steps=20)
    _improves(metrics)


def test_rloo_step_runs(tiny):
    metrics, _, _ = run_steps(
        tiny_config(tiny, "grpo", **{"grpo.advantage": "rloo", "grpo.beta": 0.0, "grpo.group_size": 2}),
        steps=1,
    )
    assert "kl/sequence" not in metrics[0]  # beta = 0: no reference pass in training
    assert np.isfinite(metrics[0]["loss"])


@pytest.mark.parametrize("objective", ["ppo", "grpo"])
def test_kl_zero_at_first_step_and_sharded_step_equals_single_device(tiny, objective):
    """Two steps (2 epochs × 2 minibatches each) on one device and on fsdp 4 × tensor 2."""
    c = tiny_config(tiny, objective, **{"mesh.fsdp": 1})
    single, s1, _ = run_steps(c, steps=2)
    c = tiny_config(tiny, objective, **{"mesh.fsdp": 4, "mesh.tensor": 2})
    sharded, s8, _ = run_steps(c, steps=2, devices=jax.devices()[:8])
    for metrics in (single, sharded):
        assert metrics[0]["kl/sequence"] == 0.0  # the sampling policy is the reference, bit for bit
        assert metrics[1]["kl/sequence"] != 0.0  # ... and no longer after one update
        assert all(np.isfinite(v) for m in metrics for v in m.values())
    for a, b in zip(single, sharded):
        assert sorted(a) == sorted(b)
        for k in a:
            # Clip fractions count tokens on either side of a threshold: float error may move one token.
            atol = 0.02 if "clip" in k else 2e-4
            np.testing.assert_allclose(b[k], a[k], rtol=2e-3, atol=atol, err_msg=k)
    # Adam turns rounding-level gradient differences of near-zero gradients into parameter differences of
    # up to ~lr: compare the meshes' parameter difference with the change the two steps made.
    assert _relative_difference(s8.params, s1.params, _initial_params(tiny)) < 1e-3


def _scored_rollout(config, expect_old=False):
    """One rollout of a freshly built run, sampled and scored (`rl.sample`, `rl.score`). `expect_old`:
    assert the sampler already supplied π_θ_old."""
    mesh, run, state, _ = build(config)
    src = run.batches
    with jax.set_mesh(mesh):
        rollout, answers = rl.sample(
            src, src.policy_tree(state.params), next(src.prompts), rl.rollout_key(state)
        )
        assert ("old_logprobs" in rollout) == expect_old
        rollout, _, _ = rl.score(src, state.params, rollout, answers)
    return rollout


def test_on_policy_grpo_skips_the_old_logprob_pass_and_updates_the_same(tiny, monkeypatch):
    """One update per rollout: π_θ_old is the update's own detached log-probs, no scoring pass for it;
    the step's loss, metrics and new parameters equal those of a step that runs that pass."""
    c = tiny_config(tiny, "grpo", **{"grpo.num_iterations": 1, "grpo.num_minibatches": 1})
    rollout = _scored_rollout(c)
    assert "ref_logprobs" in rollout and "old_logprobs" not in rollout
    fast, s_fast, _ = run_steps(c, steps=2)
    from jaxalign.trainers import grpo

    monkeypatch.setattr(grpo, "on_policy", lambda hp: False)
    full, s_full, _ = run_steps(c, steps=2)
    for a, b in zip(full, fast):
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert fast[0]["clip_ratio/region_mean"] == 0.0  # ratio exactly 1
    assert _relative_difference(s_fast.params, s_full.params, _initial_params(tiny)) < 1e-3


def test_reused_sampler_logprobs_are_the_scoring_pass_s(tiny):
    """rollout.reuse_sampler_logprobs: π_θ_old comes from the sampler (no scoring pass for it) and equals
    the pass's log-probs up to float error; the PPO step trains the same."""
    c = tiny_config(tiny, "ppo")
    scored = _scored_rollout(c)
    c2 = tiny_config(tiny, "ppo", **{"rollout.reuse_sampler_logprobs": True})
    reused = _scored_rollout(c2, expect_old=True)
    np.testing.assert_allclose(reused["old_logprobs"], scored["old_logprobs"], atol=1e-4)
    a, _, _ = run_steps(c, steps=2)
    b, _, _ = run_steps(c2, steps=2)
    np.testing.assert_allclose(b[-1]["loss"], a[-1]["loss"], rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("variant", ["dapo", "dr_grpo", "gspo", "cispo", "sapo", "gmpo", "bnpo"])
def test_grpo_family_variants_run_from_the_config(tiny, variant):
    """configs/grpo.py:<variant> presets run through the loop: DAPO (dynamic sampling weights, overlong
    penalty, clip-higher), Dr. GRPO (constant normalisation, no std), GSPO (sequence-level ratio)."""
    c = tiny_config(tiny, "grpo", variant=variant, **{"grpo.group_size": 4})
    assert c.grpo.variant == variant
    metrics, _, _ = run_steps(c, steps=2)
    assert all(np.isfinite(v) for m in metrics for v in m.values())
    if variant == "dapo":
        for m in metrics:
            assert 0.0 <= m["reward/kept_frac"] <= 1.0 and m["reward/overlong_penalty"] <= 0.0
    else:
        assert "reward/kept_frac" not in metrics[0]
    assert metrics[0]["grad_norm"] > 0


def _leaf_names(tree):
    return {str(path[-1].key) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def test_grpo_with_lora_trains_adapters_and_the_frozen_base_is_the_reference(tiny):
    """LoRA in RL: the trained tree is the policy's adapters only, the base stays bit for bit the
    checkpoint's and is the reference (KL 0 before the first update, not after it)."""
    c = tiny_config(tiny, "grpo", **{"lora.enabled": True, "lora.rank": 4})
    metrics, state, run = run_steps(c, steps=2)
    assert _leaf_names(state.params["policy"]) == {"lora_a", "lora_b"}
    for a, b in zip(jax.tree.leaves(jax.device_get(run.ref_params)), jax.tree.leaves(_initial_params(tiny))):
        np.testing.assert_array_equal(a, b)
    assert abs(metrics[0]["kl/sequence"]) < 1e-6 and abs(metrics[1]["kl/sequence"]) > 1e-6
    assert all(np.isfinite(v) for m in metrics for v in m.values())


def test_ppo_with_lora_adapts_policy_and_critic(tiny):
    """PPO with LoRA: the policy's adapters, and the critic's own adapters with its score head trained in
    full (PEFT's modules_to_save); both bases frozen in the step's `frozen` argument."""
    c = tiny_config(tiny, "ppo", **{"lora.enabled": True, "lora.rank": 4})
    metrics, state, run = run_steps(c, steps=1)
    assert _leaf_names(state.params["policy"]) == {"lora_a", "lora_b"}
    assert _leaf_names(state.params["value"]) == {"lora_a", "lora_b", "kernel"}
    assert set(state.params["value"]["score"]) == {"kernel"}
    assert sorted(run.ref_params) == ["policy", "value"]
    assert abs(metrics[0]["kl/sequence"]) < 1e-6 and np.isfinite(metrics[0]["loss"])


def test_grpo_with_bottleneck_adapters(tiny):
    c = tiny_config(tiny, "grpo", **{"adapters.kind": "bottleneck", "adapters.bottleneck_dim": 8})
    metrics, state, run = run_steps(c, steps=2)
    assert _leaf_names(state.params["policy"]) == {
        "adapter_down",
        "adapter_down_bias",
        "adapter_up",
        "adapter_up_bias",
    }
    assert abs(metrics[0]["kl/sequence"]) < 1e-6 and abs(metrics[1]["kl/sequence"]) > 1e-7


def test_gradient_accumulation_equals_whole_minibatches(tiny):
    """GRPO with the per-sequence reduction: a minibatch's gradient is the mean of its micro-batches', so
    grad_accum_steps=2 gives the same updates as 1 (up to float error)."""
    changes = {"grpo.loss_reduction": "sequence", "grpo.num_minibatches": 2, "grpo.num_iterations": 1}
    whole, s1, _ = run_steps(tiny_config(tiny, "grpo", **changes), steps=2)
    accum, s2, _ = run_steps(tiny_config(tiny, "grpo", **changes, **{"train.grad_accum_steps": 2}), steps=2)
    for a, b in zip(whole, accum):
        for k in ("loss", "grad_norm", "reward/env", "kl/sequence"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-3, atol=1e-5, err_msg=k)
    assert _relative_difference(s2.params, s1.params, _initial_params(tiny)) < 1e-3


# ----------------------------------------------------------------------------------------------------
# The loop: resume, CLI.
# ----------------------------------------------------------------------------------------------------
def _train_records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        out = {}
        for line in f:
            r = json.loads(line)
            if "train/loss" in r:
                out[r["step"]] = r
    return out


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny, tmp_path):
    """A 4-step run checkpointing at 2 and 4; then its checkpoint 4 is deleted (as if it crashed after step
    3) and the run resumes at 2: steps 3 and 4 (sampling, shuffling, β, data order) must repeat exactly."""
    import shutil

    config = tiny_config(
        tiny,
        "ppo",
        steps=4,
        **{
            "train.checkpoint_every": 2,
            "ppo.adaptive_kl": True,
            "reward.function": "jaxalign.data.embedded:reward",
        },
    )
    wd = str(tmp_path / "run")
    loop.train_and_evaluate(config, wd, devices=jax.devices()[:1])
    first = _train_records(wd)
    shutil.rmtree(os.path.join(wd, "checkpoints", "4"))
    os.rename(os.path.join(wd, "metrics.jsonl"), os.path.join(wd, "first.jsonl"))
    loop.train_and_evaluate(config, wd, devices=jax.devices()[:1])
    again = _train_records(wd)
    assert sorted(again) == [3, 4]
    for step in (3, 4):
        for k in (
            "train/loss",
            "train/kl/sequence",
            "train/kl/coef",
            "train/completion/length",
            "train/reward/env",
        ):
            assert again[step][k] == pytest.approx(first[step][k], rel=1e-5, abs=1e-6), (step, k)


def run_cli(config, workdir, *overrides):
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [
        sys.executable,
        "-m",
        "jaxalign.main",
        f"--config={os.path.join(ROOT, 'configs', config)}",
        f"--workdir={workdir}",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,extra",
    [("ppo.py", "--config.train.grad_accum_steps=2"), ("grpo.py", "--config.lora.enabled=True")],
)
def test_cli_end_to_end(config, extra, tmp_path):
    """The issue-15 commands: PPO with gradient accumulation, GRPO with LoRA, through the one loop."""
    wd = str(tmp_path / "run")
    r = run_cli(
        config,
        wd,
        extra,
        "--config.train.num_steps=2",
        "--config.train.batch_size=8",
        "--config.train.log_every=1",
        "--config.train.eval_batch_size=64",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [m["step"] for m in records if "train/loss" in m] == [1, 2]
    evals = [m for m in records if "eval/reward/env" in m]
    assert [m["step"] for m in evals] == [0, 2]
    assert evals[0]["eval/kl/sequence"] == 0.0
    assert os.path.exists(os.path.join(wd, "hf", "model.safetensors"))


@pytest.mark.slow
def test_grpo_sigterm_resumes_equal_and_nan_reward_steps_are_skipped(tiny, tmp_path, monkeypatch):
    """GRPO with a NaN reward at step 2 (test-only injection): that step's updates are skipped and counted;
    SIGTERM after step 2 stops with a finite checkpoint and exit code 75, and the rerun equals the
    uninterrupted run (jaxalign/trainers/preemption.py; the offline loop's CLI tests are in
    test_preemption.py)."""
    from jaxalign.checkpoints.orbax_state import StateCheckpointer
    from jaxalign.trainers import preemption

    config = tiny_config(tiny, "grpo", steps=4, **{"reward.function": "jaxalign.data.embedded:reward"})
    monkeypatch.setenv(preemption.TEST_NAN_ENV, "2")
    full = str(tmp_path / "full")
    loop.train_and_evaluate(config, full, devices=jax.devices()[:1])
    ref = _train_records(full)
    assert [ref[s]["train/nonfinite"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 0.0]
    assert ref[4]["train/skipped_nonfinite"] == 1.0

    wd = str(tmp_path / "run")
    monkeypatch.setenv(preemption.TEST_SIGNAL_ENV, "2")
    with pytest.raises(preemption.Preempted) as e:
        loop.train_and_evaluate(config, wd, devices=jax.devices()[:1])
    assert e.value.step == 2 and e.value.code == preemption.EXIT_PREEMPTED
    ckpt = StateCheckpointer(os.path.join(wd, "checkpoints"))
    assert ckpt.latest_step() == 2
    ckpt.close()
    monkeypatch.delenv(preemption.TEST_SIGNAL_ENV)
    loop.train_and_evaluate(config, wd, devices=jax.devices()[:1])
    again = _train_records(wd)
    assert sorted(again) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        for k in (
            "train/loss",
            "train/grad_norm",
            "train/reward/env",
            "train/nonfinite",
            "train/skipped_nonfinite",
        ):
            np.testing.assert_array_equal(again[step][k], ref[step][k], err_msg=f"{step} {k}")


# ----------------------------------------------------------------------------------------------------
# Online DPO (trainers/online_dpo.py).
# ----------------------------------------------------------------------------------------------------
def _online_hp(**changes):
    hp = dict(common.load_config_file(os.path.join(ROOT, "configs", "online_dpo.py")).online_dpo.to_dict())
    hp.update(missing_eos_penalty=0.0, max_new_tokens=3, **changes)
    return hp


def test_online_dpo_pairs_best_with_worst_and_drops_small_margins():
    from jaxalign.trainers import online_dpo

    # 2 prompts x n=3 answers; prompt 0 scores (0, 1, 0.5): chosen row 1, rejected row 0, margin 1;
    # prompt 1 scores (0.5, 0.5, 0.25): margin 0.25 < min_margin 0.5 -> weight 0.
    score = jnp.array([0.0, 1.0, 0.5, 0.5, 0.5, 0.25])
    tokens = jnp.arange(18, dtype=jnp.int32).reshape(6, 3)
    mask = jnp.array([[1, 1, 0]] * 6, jnp.int32)
    ref = jnp.arange(18, dtype=jnp.float32).reshape(6, 3) / 10
    rollout = {
        "prompt_ids": jnp.repeat(jnp.array([[5, 6], [7, 8]], jnp.int32), 3, axis=0),
        "prompt_segment_ids": jnp.ones((6, 2), jnp.int32),
        "tokens": tokens,
        "mask": mask,
        "ref_logprobs": ref,
        "score": score,
        "stopped": jnp.ones(6),
    }
    pairs, metrics, beta = online_dpo.prepare(rollout, 0.0, _online_hp(n=3))
    assert beta == 0.0
    np.testing.assert_array_equal(pairs["chosen_tokens"][0], tokens[1])
    np.testing.assert_array_equal(pairs["rejected_tokens"][0], tokens[0])
    np.testing.assert_array_equal(pairs["prompt_ids"][1], [7, 8])
    np.testing.assert_array_equal(pairs["weight"], [1.0, 0.0])
    np.testing.assert_allclose(pairs["ref_chosen_logps"][0], 0.3 + 0.4)  # row 1, masked sum
    np.testing.assert_allclose(pairs["ref_rejected_logps"][0], 0.0 + 0.1)
    assert float(metrics["pairs/kept_frac"]) == 0.5 and float(metrics["pairs/margin"]) == 1.0


def test_online_dpo_loss_is_dpo_on_the_kept_pairs(tiny):
    from jaxalign import checkpoints, losses, models
    from jaxalign.sampling.scoring import completion_logprobs
    from jaxalign.trainers import online_dpo

    mcfg, params = checkpoints.load_hf_model(tiny["model"])
    model = models.Transformer(mcfg)
    rng = np.random.default_rng(0)
    pairs = {
        "prompt_ids": jnp.asarray(rng.integers(3, 50, (3, 4)), jnp.int32),
        "prompt_segment_ids": jnp.ones((3, 4), jnp.int32),
        "chosen_tokens": jnp.asarray(rng.integers(3, 50, (3, 5)), jnp.int32),
        "chosen_mask": jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], jnp.int32),
        "rejected_tokens": jnp.asarray(rng.integers(3, 50, (3, 5)), jnp.int32),
        "rejected_mask": jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], jnp.int32),
        "ref_chosen_logps": jnp.array([-3.0, -9.0, -2.0]),
        "ref_rejected_logps": jnp.array([-4.0, -5.0, -7.0]),
        "weight": jnp.array([1.0, 0.0, 1.0]),
    }
    hp = _online_hp(beta=0.3)
    loss, metrics = online_dpo.make_loss_fn(model, None, hp)({"policy": params}, None, pairs)

    def logps(prefix):
        ro = {k: pairs[k] for k in ("prompt_ids", "prompt_segment_ids")}
        ro.update(tokens=pairs[prefix + "tokens"], mask=pairs[prefix + "mask"])
        return jnp.sum(completion_logprobs(model, params, ro)[0], -1)

    kept = np.array([0, 2])
    want, want_metrics = losses.dpo_loss(
        logps("chosen_")[kept],
        logps("rejected_")[kept],
        pairs["ref_chosen_logps"][kept],
        pairs["ref_rejected_logps"][kept],
        beta=0.3,
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/margins"], want_metrics["rewards/margins"], rtol=1e-5)


def test_online_dpo_runs_through_the_one_loop(tiny, tmp_path):
    config = tiny_config(tiny, "online_dpo", steps=2, **{"reward.function": "jaxalign.data.embedded:reward"})
    loop.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    records = _train_records(str(tmp_path / "run"))
    assert sorted(records) == [1, 2]
    for k in ("train/pairs/kept_frac", "train/pairs/margin", "train/rewards/margins", "train/loss"):
        assert np.isfinite(records[2][k]), k


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("n", 1, r"online_dpo\.n=1: must be >= 2"),
        # DPO's own checks, online as offline (the registry's `_DPO`).
        ("label_smoothing", 0.5, r"online_dpo\.label_smoothing=0\.5: must be in \[0, 0\.5\)"),
        ("loss_type", "sigmoidd", r"online_dpo\.loss_type='sigmoidd': expected one of"),
        ("beta", 0.0, r"online_dpo\.beta=0\.0: must be > 0"),
    ],
)
def test_online_dpo_bad_values_are_one_line(tiny, field, value, match):
    config = tiny_config(tiny, "online_dpo", **{f"online_dpo.{field}": value})
    with pytest.raises(ConfigError, match=match):
        rl.validate(config, 1)


def test_every_rl_objective_is_one_declared_algorithm_record():
    from jaxalign import registry
    from jaxalign.trainers import algorithm, grpo

    for name in registry.names("rl"):
        a = algorithm.of(name)
        assert isinstance(a, algorithm.Algorithm) and a.name == name
        assert rl.algorithm(tiny_config_like(name)) is a
    assert (algorithm.of("ppo").critic, algorithm.of("grpo").critic) == (True, False)
    assert not algorithm.of("online_dpo").packs and not algorithm.of("online_dpo").corrects
    assert sorted(grpo.ADVANTAGES) == ["grpo", "rloo"]  # the advantage estimators: one table


def tiny_config_like(objective):
    return importlib.import_module(f"configs.{objective}").get_config()


# ----------------------------------------------------------------------------------------------------
# Online DPO labelled by an LLM judge (reward.judge), and how good any labeller's pairs are.
# ----------------------------------------------------------------------------------------------------
SHORT_JUDGE = "Q: {question}\n1: {answer_1}\n2: {answer_2}\nBetter? 1 or 2."  # the tiny models' window is 64


def _sig(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def test_judge_score_is_the_round_robin_mean_of_pairwise_preferences(stub_judge):
    from jaxalign.data import embedded
    from jaxalign.eval import judge as judge_lib

    tok = embedded.load_tokenizer()
    q = {"2 plus 2 is 4.": 2.0, "2 plus 2 is 5.": 0.5, "4.": 1.0, "8 times 3 is 24.": 0.0}
    prompts = ["what is 2 plus 2?", [{"role": "user", "content": "what's 8 times 3?"}]]
    # Prompt 0: three different answers; prompt 1: three identical ones (a tie: exactly 1/2 each).
    answers = ["2 plus 2 is 4.", "2 plus 2 is 5.", "4.", *["8 times 3 is 24."] * 3]
    stub = stub_judge(tok, q, bias=0.7)  # a position bias, cancelled by the two orders
    out = judge_lib.round_robin_scores(
        None, None, tok, prompts, answers, 3, template=SHORT_JUDGE, logits_fn=stub
    )
    s = out["score"]
    assert s.shape == (6,) and out["truncated"] == 0

    # By hand: p(i > j) = (sigmoid(q_i - q_j + b) + sigmoid(q_i - q_j - b)) / 2, i first then j first;
    # s_i = the mean over the other two answers.
    def p(d):
        return (_sig(d + 0.7) + _sig(d - 0.7)) / 2

    want = [(p(2 - 0.5) + p(2 - 1)) / 2, (p(0.5 - 2) + p(0.5 - 1)) / 2, (p(1 - 2) + p(1 - 0.5)) / 2]
    np.testing.assert_allclose(s[:3], want, rtol=1e-12)
    assert list(s[3:]) == [0.5, 0.5, 0.5] and s[:3].sum() == pytest.approx(1.5)
    # The same numbers from pairwise_preferences, every ordered pair of each prompt's answers.
    for p in range(2):
        for i in range(3):
            others = [j for j in range(3) if j != i]
            pref = judge_lib.pairwise_preferences(
                None,
                None,
                tok,
                [prompts[p]] * 2,
                [answers[3 * p + i]] * 2,
                [answers[3 * p + j] for j in others],
                template=SHORT_JUDGE,
                logits_fn=stub,
            )
            assert s[3 * p + i] == pytest.approx(np.mean(pref), abs=1e-12)
    np.testing.assert_allclose(judge_lib.round_robin([[0.9, 0.2, 0.5]], 3), [[0.55, 0.3, 0.65]])


def test_online_dpo_label_accuracy_checkable_and_tied_fractions():
    from jaxalign.trainers import online_dpo

    # 5 prompts × n=3, min_margin 0.5. Chosen = argmax, rejected = argmin of each prompt's scores:
    #   p0 (0, 1, .5)    correct (0, 1, 0): chosen correct, rejected wrong       -> checkable, right
    #   p1 (1, 0, .2)    correct (0, 1, 1): chosen wrong, rejected correct       -> checkable, wrong
    #   p2 (.5, .5, .5)  all tied: no pair (weight 0)
    #   p3 (1, 0, .3)    correct (1, 1, 0): chosen and rejected both correct     -> not checkable
    #   p4 (.3, .1, .2)  margin .2 < .5: dropped, although its answers differ in correctness
    score = jnp.array([0, 1, 0.5, 1, 0, 0.2, 0.5, 0.5, 0.5, 1, 0, 0.3, 0.3, 0.1, 0.2])
    correct = jnp.array([0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 0], jnp.float32)
    rollout = {
        "prompt_ids": jnp.ones((15, 2), jnp.int32),
        "prompt_segment_ids": jnp.ones((15, 2), jnp.int32),
        "tokens": jnp.ones((15, 3), jnp.int32),
        "mask": jnp.ones((15, 3), jnp.int32),
        "ref_logprobs": jnp.zeros((15, 3)),
        "score": score,
        "stopped": jnp.ones(15),
        "correct": correct,
    }
    _, m, _ = online_dpo.prepare(rollout, 0.0, _online_hp(n=3))
    assert float(m["pairs/kept_frac"]) == pytest.approx(3 / 5)
    assert float(m["pairs/tied_frac"]) == pytest.approx(1 / 5)
    assert float(m["pairs/checkable"]) == 2 and float(m["pairs/label_accuracy"]) == 0.5
    assert float(m["pairs/label_correct"]) == 1
    # No checkable pair: 0 over 0 pairs, no NaN; no check function: neither metric.
    _, m, _ = online_dpo.prepare({**rollout, "correct": jnp.zeros(15)}, 0.0, _online_hp(n=3))
    assert float(m["pairs/checkable"]) == 0 and float(m["pairs/label_accuracy"]) == 0
    assert float(m["pairs/label_correct"]) == 0
    del rollout["correct"]
    _, m, _ = online_dpo.prepare(rollout, 0.0, _online_hp(n=3))
    assert "pairs/label_accuracy" not in m and "pairs/checkable" not in m and "pairs/tied_frac" in m
    assert "pairs/label_correct" not in m


def _judge_config(tiny, judge, steps=2, **changes):
    return tiny_config(
        tiny,
        "online_dpo",
        steps=steps,
        **{
            "reward.function": "jaxalign.data.embedded:reward",
            "reward.judge": judge,
            "reward.judge_template": SHORT_JUDGE,
            "online_dpo.n": 4,
            "online_dpo.min_margin": 0.0,
            **changes,
        },
    )


def test_online_dpo_judge_scores_are_what_is_trained_on(tiny):
    """The rollout's score is the round robin of the judge's pairwise preferences over each prompt's n
    answers, recomputed here pair by pair (the judge is the starting policy: its weights are shared)."""
    from jaxalign import hosts
    from jaxalign.eval import judge as judge_lib
    from jaxalign.trainers import rewards

    config = _judge_config(tiny, tiny["model"], **{"train.batch_size": 4})
    mesh, run, state, _ = build(config)
    src = run.batches
    assert src.judge.params is src.ref_params  # no second copy
    with jax.set_mesh(mesh):
        rollout, answers = rl.sample(
            src, src.policy_tree(state.params), next(src.prompts), rl.rollout_key(state)
        )
        rollout, _, _ = rl.score(src, state.params, rollout, answers)
    got = np.asarray(rollout["score"])
    np.testing.assert_array_equal(got, np.asarray(rollout["judge_score"]))
    tokens, mask, ids, seg = hosts.gather(
        tuple(rollout[k] for k in ("tokens", "mask", "prompt_ids", "prompt_segment_ids"))
    )
    texts = rewards.decode(src.tokenizer, tokens, mask, keep_special=False)
    questions = rewards.questions(src.tokenizer, ids, seg)
    j = src.judge
    for r in range(len(texts)):
        others = [k for k in range(r - r % 4, r - r % 4 + 4) if k != r]
        p = judge_lib.pairwise_preferences(
            j.module,
            j.params,
            j.tokenizer,
            [questions[r]] * 3,
            [texts[r]] * 3,
            [texts[k] for k in others],
            template=SHORT_JUDGE,
        )
        assert got[r] == pytest.approx(np.mean(p), abs=1e-5), r
    assert all(q and "<|" not in q for q in questions)


def test_online_dpo_with_a_judge_runs_through_the_one_loop(tiny, tmp_path):
    import shutil

    judge = str(tmp_path / "judge")
    shutil.copytree(tiny["model"], judge)  # another directory: loaded as a model of its own
    config = _judge_config(tiny, judge)
    loop.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    records = _train_records(str(tmp_path / "run"))
    assert sorted(records) == [1, 2]
    for k in (
        "train/pairs/kept_frac",
        "train/pairs/tied_frac",
        "train/pairs/label_accuracy",
        "train/pairs/label_correct",
        "train/pairs/checkable",
        "train/reward/accuracy",
        "train/loss",
    ):
        assert np.isfinite(records[2][k]), k
    assert 0 <= records[2]["train/pairs/kept_frac"] <= 1 and 0 <= records[2]["train/pairs/tied_frac"] <= 1
    assert records[2]["train/pairs/kept_frac"] + records[2]["train/pairs/tied_frac"] == pytest.approx(1)
    assert 0 <= records[2]["train/reward/score"] <= 1  # win rates


def test_online_dpo_bad_judges_are_one_line(tiny, tmp_path, cli):
    """A missing judge, a classifier as the judge, a judge next to a reward model, a bad template, a judge
    for PPO / GRPO: one error naming the field (or the directory), exit code 2 from the command line."""
    import shutil

    from jaxalign.errors import CheckpointError

    missing = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"config\.reward\.judge=.*nowhere"):
        rl.validate(_judge_config(tiny, missing), 1)
    clf = tmp_path / "classifier"
    shutil.copytree(tiny["model"], clf)
    cfg = json.loads((clf / "config.json").read_text())
    (clf / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(CheckpointError, match="is a classifier; the judge must be a chat"):
        rl.validate(_judge_config(tiny, str(clf)), 1)
    with pytest.raises(ConfigError, match=r"config\.reward\.judge=.*and reward\.model_path=.*both set"):
        rl.validate(_judge_config(tiny, tiny["model"], **{"reward.model_path": tiny["model"]}), 1)
    with pytest.raises(ConfigError, match=r"config\.reward\.judge_template=.*lacks \{answer_2\}"):
        rl.validate(
            _judge_config(tiny, tiny["model"], **{"reward.judge_template": "{question} {answer_1}"}), 1
        )
    with pytest.raises(ConfigError, match=r"config\.reward\.judge_template=.*the template alone is"):
        build(
            _judge_config(
                tiny, tiny["model"], **{"reward.judge_template": "{question}{answer_1}{answer_2}" + " 1" * 80}
            )
        )
    for objective in ("ppo", "grpo"):
        with pytest.raises(
            ConfigError, match=rf"config\.reward\.judge=.*labels only online_dpo.*{objective}"
        ):
            rl.validate(tiny_config(tiny, objective, **{"reward.judge": tiny["model"]}), 1)
    # The command line: one line, exit code 2, before anything is loaded.
    r = cli(
        "jaxalign.main",
        f"--config={os.path.join(ROOT, 'configs', 'online_dpo.py')}",
        f"--workdir={tmp_path / 'run'}",
        f"--config.reward.judge={missing}",
    )
    assert r.returncode == 2 and "config.reward.judge=" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------
# Off-policy overlap (rollout.max_staleness, trainers/off_policy.py).
# ----------------------------------------------------------------------------------------------------
def test_stale_rollouts_are_the_older_policy_s_samples_and_are_importance_weighted(tiny):
    """max_staleness=1: step 1 trains on a rollout of its own parameters (the on-policy run's), step 2 on
    the one sampled by the parameters before update 1, whose log-probs are its behaviour log-probs."""
    from jaxalign.sampling.scoring import completion_logprobs, merge_units

    config = tiny_config(tiny, "grpo", **{"rollout.max_staleness": 1})
    mesh, run, state, step = build(config)
    src = run.batches
    with jax.set_mesh(mesh):
        theta0 = jax.tree.map(jnp.copy, src.policy_tree(state.params))
        batch1, _, m1 = src.next(state)
        assert len(src.in_flight) == 1 and float(m1["rollout/staleness"]) == 0.0
        state, metrics1 = step(state, batch1, run.ref_params)
        theta1 = src.policy_tree(state.params)
        batch2, _, m2 = src.next(state)
        assert float(m2["rollout/staleness"]) == 1.0
        mb = merge_units(batch2)
        lp0, lp1 = (completion_logprobs(run.model, p, mb)[0] for p in (theta0, theta1))
        state, metrics2 = step(state, batch2, run.ref_params)
    mask = np.asarray(mb["mask"], bool)
    behaviour = np.asarray(mb["behaviour_logprobs"])[mask]
    np.testing.assert_allclose(behaviour, np.asarray(lp0)[mask], atol=2e-4)  # sampled by θ_0
    assert np.max(np.abs(behaviour - np.asarray(lp1)[mask])) > 1e-2  # not by θ_1
    # The loss weighs them by min(π_θ1 / μ, C): the logged mean ratio is that of θ_1 to θ_0.
    ratio = np.mean(np.exp(np.asarray(lp1)[mask] - behaviour))
    assert float(metrics2["off_policy/is_ratio"]) == pytest.approx(ratio, rel=1e-3)
    assert float(metrics1["off_policy/is_ratio"]) == pytest.approx(1.0, abs=1e-3)

    # Step 1 is the on-policy run's step 1 (same key, same parameters).
    on, _, _ = run_steps(tiny_config(tiny, "grpo"), 1)
    assert on[0]["loss"] == pytest.approx(float(metrics1["loss"]), rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_sigterm_mid_overlap_keeps_the_rollouts_in_flight_and_resumes_equal(tiny, tmp_path, monkeypatch):
    """max_staleness=2: the checkpoint of step 2 holds the two rollouts sampled ahead; the resumed run
    trains on them and follows the uninterrupted run's losses exactly (none is lost or resampled)."""
    import json

    from jaxalign.trainers import preemption

    config = tiny_config(tiny, "grpo", steps=4, **{"rollout.max_staleness": 2})
    full = str(tmp_path / "full")
    loop.train_and_evaluate(config, full, devices=jax.devices()[:1])
    ref = _train_records(full)
    assert [ref[s]["train/rollout/staleness"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 2.0, 2.0]

    wd = str(tmp_path / "run")
    monkeypatch.setenv(preemption.TEST_SIGNAL_ENV, "2")
    with pytest.raises(preemption.Preempted):
        loop.train_and_evaluate(config, wd, devices=jax.devices()[:1])
    with open(
        os.path.join(wd, "checkpoints", "2", "data", "metadata")
    ) as f:  # orbax's JSON of the data state
        in_flight = json.load(f)["in_flight"]
    assert [d["step"] for d in in_flight] == [0, 1]  # sampled by θ_0 and θ_1, not yet trained on
    monkeypatch.delenv(preemption.TEST_SIGNAL_ENV)
    loop.train_and_evaluate(config, wd, devices=jax.devices()[:1])
    again = _train_records(wd)
    for s in (1, 2, 3, 4):
        for k in ("train/loss", "train/grad_norm", "train/reward/env", "train/off_policy/is_ratio"):
            np.testing.assert_array_equal(again[s][k], ref[s][k], err_msg=f"{s} {k}")


def test_a_sampler_on_its_own_devices_samples_what_the_train_mesh_would(tiny, tmp_path):
    """mesh.rollout_devices=4 of 8: the train mesh spans the first 4, the sampler the last 4 (weights copied
    device to device each step, the copy's time logged). It trains exactly as the sampler on the train mesh
    does. (With max_staleness >= 1 the two meshes run at once: benchmarks/grpo_overlap.py.)"""
    devices = jax.devices()
    assert len(devices) == 8
    runs = {}
    for name, n, devs in (("same", 0, devices[:4]), ("own", 4, devices)):
        config = tiny_config(tiny, "grpo", **{"mesh.rollout_devices": n})
        loop.train_and_evaluate(config, str(tmp_path / name), devices=devs)
        runs[name] = _train_records(str(tmp_path / name))
    for s in (1, 2):
        for k in ("train/loss", "train/grad_norm", "train/reward/env", "train/completion/length"):
            np.testing.assert_array_equal(runs["own"][s][k], runs["same"][s][k], err_msg=f"{s} {k}")
        assert runs["own"][s]["train/rollout/weight_sync_s"] > 0
    with pytest.raises(ConfigError, match=r"config\.mesh\.rollout_devices=8"):
        rl.validate(tiny_config(tiny, "grpo", **{"mesh.rollout_devices": 8}), num_devices=8)


def _raises(answer, completion):
    return 1 / 0


def _nan_reward(answer, completion):
    return float("nan")


@pytest.mark.parametrize(
    "reward_fn,match",
    [
        (
            _raises,
            r"config\.reward\.function='.*:_raises': raised ZeroDivisionError: division by zero on rollout row 0",
        ),
        (
            _nan_reward,
            r"config\.reward\.function='.*:_nan_reward': returned nan, not a finite number, on rollout row 0",
        ),
    ],
)
def test_a_reward_function_that_fails_is_one_line_naming_it_and_the_row(tiny, reward_fn, match):
    with pytest.raises(ConfigError, match=match):
        run_steps(tiny_config(tiny, "grpo"), 1, reward_fn=reward_fn)


def test_ppo_samples_ahead_with_icepop_masking(tiny):
    """PPO with max_staleness=1 and IcePop: step 2 trains on step 1's sampled-ahead rollout, its tokens
    weighed by 1[0.5 <= π_old / μ <= 5] (π_old from the scoring pass, μ the sampler's)."""
    config = tiny_config(tiny, "ppo", **{"rollout.max_staleness": 1, "rollout.is_correction": "icepop"})
    metrics, _, _ = run_steps(config, 3)
    assert [m["rollout/staleness"] for m in metrics] == [0.0, 1.0, 1.0]
    assert metrics[0]["off_policy/is_ratio"] == pytest.approx(1.0, abs=1e-3)  # the parameters that sampled
    assert all(0.0 <= m["off_policy/corrected_frac"] <= 1.0 for m in metrics)
    assert metrics[1]["off_policy/is_ratio"] != pytest.approx(1.0, abs=1e-4)  # one update later
    assert all(np.isfinite(m["loss"]) for m in metrics)


# ----------------------------------------------------------------------------------------------------
# Multi-turn environments (jaxalign/envs).
# ----------------------------------------------------------------------------------------------------
def _env_config(tiny, steps=2, **changes):
    return tiny_config(
        tiny,
        "grpo",
        steps=steps,
        **{
            "env.name": "tests.envs.test_episodes:Scripted",
            "env.max_turns": 2,
            "env.max_env_tokens": 12,
            "data.max_length": 32 + 2 * 8 + 12,
            **changes,
        },
    )


def test_multi_turn_episodes_train_through_the_one_loop(tiny):
    """Every episode is a turn, the environment's tool message, a second turn: both turns in the loss, the
    rewards of both turns summed (0.25 + 1), the per-turn metrics logged, KL 0 at the first step."""
    metrics, _, run = run_steps(_env_config(tiny), 2)
    assert run.batches.episodes is not None
    for m in metrics:
        assert m["turns"] == 2.0 and m["env/calls"] == 1.0
        assert m["reward/env"] == pytest.approx(1.25) and m["env/turn_reward"] == pytest.approx(0.625)
        assert m["env/fed_tokens"] < m["env/context_tokens"]  # nothing prefilled twice; prompts shared
        assert np.isfinite(m["loss"])
    assert abs(metrics[0]["kl/k3"]) < 1e-6


@pytest.mark.parametrize(
    "changes,match",
    [
        (
            {"env.name": "nope.module:Env"},
            "config.env.name='nope.module:Env': 'nope.module:Env': cannot import",
        ),
        ({"env.max_turns": 0}, "config.env.max_turns=0: must be >= 1"),
        ({"data.max_length": 40}, "config.data.max_length=40: must hold data.max_prompt_length"),
        (
            {"rollout.max_staleness": 1},
            "config.rollout.max_staleness=1: multi-turn episodes are sampled on-policy",
        ),
    ],
)
def test_bad_env_configs_are_one_line(tiny, changes, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        rl.validate(_env_config(tiny, **changes), 1)


@pytest.mark.slow
def test_sigterm_mid_multi_turn_run_resumes_equal(tiny, tmp_path, monkeypatch):
    """Preempted after step 2 of a multi-turn run: the rerun resumes at the data position and keys of the
    checkpoint and repeats the uninterrupted run's episodes bit for bit (no episode lost or redone)."""
    from jaxalign.trainers import preemption

    config = _env_config(tiny, steps=3)
    full = str(tmp_path / "full")
    loop.train_and_evaluate(config, full, devices=jax.devices()[:1])
    ref = _train_records(full)
    wd = str(tmp_path / "run")
    monkeypatch.setenv(preemption.TEST_SIGNAL_ENV, "2")
    with pytest.raises(preemption.Preempted):
        loop.train_and_evaluate(config, wd, devices=jax.devices()[:1])
    monkeypatch.delenv(preemption.TEST_SIGNAL_ENV)
    loop.train_and_evaluate(config, wd, devices=jax.devices()[:1])
    again = _train_records(wd)
    assert sorted(again) == [1, 2, 3]
    for step in (1, 2, 3):
        for k in (
            "train/loss",
            "train/grad_norm",
            "train/reward/env",
            "train/completion/length",
            "train/turns",
        ):
            np.testing.assert_array_equal(again[step][k], ref[step][k], err_msg=f"{step} {k}")
