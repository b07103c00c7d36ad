"""Where an on-policy RL step's time goes: sampling, scoring (device forwards, host rewards), update.

  python benchmarks/rl_step_split.py --config=configs/grpo.py --steps=10
  python benchmarks/rl_step_split.py --config=configs/ppo.py --config.reward.model_path=

Runs `--warmup` steps (compilation) then `--steps` timed steps of `jaxalign.trainers.rl`, blocking on
the device after each phase so that each phase's time is its own. The training loop runs the phases back
to back as well (the host's reward work waits for the sampled tokens, the update for the rewards), so the
phase times add up to its step time:

  sample        the jitted sampler: prefill + decode loop with the KV cache           (rl.sample;
                with mesh.rollout_devices, the weights' copy to the sampler's devices first)
  score/device  forward passes: policy and reference log-probs, critic values, RM      (Rollouts.score_fn)
  score/host    tokens to the host, decode, the Python reward / check functions       (rl.host_scores)
  update        advantages + epochs × minibatches of forward/backward/optimiser       (Rollouts.prepare,
                                                                                        the loop's step)
The run, state and step are the loop's own (`loop.build`); score/device + score/host are `rl.score`.

Prints milliseconds per step and the share of each phase, and the rollout throughput in generated tokens/s.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "An RL config file (ppo / grpo).", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation).")

PHASES = ("sample", "score/device", "score/host", "update")


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxalign import hosts, sharding
    from jaxalign.trainers import loop, rl

    config = _CONFIG.value
    train_devices, rollout_devices = loop.split_devices(config, jax.devices())
    mesh_shape = rl.validate(config, jax.device_count(), jax.process_count())
    mesh = sharding.make_mesh(*mesh_shape, devices=train_devices)
    times = {p: [] for p in PHASES}
    tokens = []
    with jax.set_mesh(mesh):
        run, state, train_step = loop.build(config, mesh, rollout_devices)
        src = run.batches  # rl.Rollouts: the loop's batch source, its phases timed one by one
        for i in range(_WARMUP.value + _STEPS.value):
            prompts = next(src.prompts)
            t0 = time.perf_counter()
            policy = src.policy_tree(state.params)
            if src.sync is not None:  # mesh.rollout_devices: the weights copied to the sampler's devices
                policy = src.sync(policy)
            rollout, answers = rl.sample(src, policy, prompts, rl.rollout_key(state))
            jax.block_until_ready(rollout)
            t1 = time.perf_counter()
            # The padding-free layout (host) and the forward passes (device), as `rl.score` does them.
            keys = ("prompt_ids", "prompt_segment_ids", "tokens", "mask")
            prompt_ids, prompt_seg, toks, mask = hosts.gather(tuple(rollout[k] for k in keys))
            src.step, perm = int(state.step), None
            if src.units:
                rollout, perm = rl.pack(src, rollout, prompt_ids, prompt_seg, toks, mask)
            scored = jax.block_until_ready(src.score_fn(state.params, src.ref_params, src.rm_params, rollout))
            t2 = time.perf_counter()
            host, n = rl.host_scores(src, rollout, answers, toks, mask)
            rollout = rl.combine(src, rollout, scored, host)
            t3 = time.perf_counter()
            batch, _, kl_coef = src.prepare(rollout, jnp.float32(src.kl_coef))
            if perm is not None and src.split_units is not None:
                batch = src.split_units(batch, perm)
            src.kl_coef = float(kl_coef)  # β for the next rollout (PPO's adaptive controller)
            state, metrics = train_step(state, batch, run.ref_params)
            jax.block_until_ready((state, metrics))
            t4 = time.perf_counter()
            if i >= _WARMUP.value:
                for p, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    times[p].append(dt)
                tokens.append(n)
        run.batches.close()
    ms = {p: 1e3 * float(np.median(v)) for p, v in times.items()}
    total = sum(ms.values())
    rows = config.train.batch_size * rl.group_size(config)
    print(
        f"{config.objective}: {rows} rollouts × up to {config.rollout.max_new_tokens} new tokens per step, "
        f"{rl.updates_per_step(config)} updates per step, {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s); median over {_STEPS.value} steps"
    )
    for p in PHASES:
        print(f"  {p:<13} {ms[p]:8.1f} ms  {100 * ms[p] / total:5.1f}%")
    print(
        f"  {'step':<13} {total:8.1f} ms   generated {np.mean(tokens):.0f} tokens/step, "
        f"{np.mean(tokens) / (ms['sample'] / 1e3):.0f} tokens/s while sampling"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
