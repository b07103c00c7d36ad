"""Where an on-policy RL step's time goes: sampling, scoring (device forwards, host rewards), update.

  python benchmarks/rl_step_split.py --config=configs/grpo.py --steps=10
  python benchmarks/rl_step_split.py --config=configs/ppo.py --config.reward.model_path=

Runs `--warmup` steps (compilation) then `--steps` timed steps of `jaxalign.trainers.rl`, blocking on
the device after each phase so that each phase's time is its own. The training loop runs the phases back
to back as well (the host's reward work waits for the sampled tokens, the update for the rewards), so the
phase times add up to its step time:

  sample        the jitted sampler: prefill + decode loop with the KV cache           (rl.sample)
  score/device  forward passes: policy and reference log-probs, critic values, RM      (run.score)
  score/host    tokens to the host, decode, the Python reward / check functions       (rl.host_scores)
  update        advantages + epochs × minibatches of forward/backward/optimiser       (run.update)

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
    import numpy as np
    from jaxalign import sharding
    from jaxalign.trainers import rl

    config = _CONFIG.value
    mesh = sharding.make_mesh(*rl.validate(config, jax.device_count()))
    run, state = rl.build(config, mesh)
    times = {p: [] for p in PHASES}
    tokens = []
    with jax.set_mesh(mesh):
        for i in range(_WARMUP.value + _STEPS.value):
            batch = next(run.train_iter)
            t0 = time.perf_counter()
            rollout, answers = rl.sample(run, state.params["policy"], batch, rl.rollout_key(state))
            jax.block_until_ready(rollout)
            t1 = time.perf_counter()
            scored = jax.block_until_ready(run.score(state.params, run.ref_params, run.rm_params, rollout))
            t2 = time.perf_counter()
            host, n = rl.host_scores(run, rollout, answers)
            rollout = rl.combine(run, rollout, scored, host)
            t3 = time.perf_counter()
            state, metrics = run.update(state, rollout)
            jax.block_until_ready((state, metrics))
            t4 = time.perf_counter()
            if i >= _WARMUP.value:
                for p, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    times[p].append(dt)
                tokens.append(n)
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
