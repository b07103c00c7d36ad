"""Parts of `benchmarks/device_check.sh` that run in one process on the lent accelerator.

  python benchmarks/device_check.py generate --out=gen.json [--tiny]   # tokens/s at batch 64 and 256
  python benchmarks/device_check.py plan --out=plan.json [--tiny]      # the planner's peak vs the device's

generate: a random Llama-3.2-1B-shaped model (bf16), 128-token prompts, 256 new tokens (greedy, EOS never
hit), the jitted sampler (`sampling.make_generate_fn`) timed after a warm-up; generated tokens per second.
plan: the DPO step of `gpu_step.py`'s config (1B shape, 2,048 tokens, packed, bf16): `jaxalign.plan`'s
predicted per-device total, then one real step of the trainer's own build and the device's
`peak_bytes_in_use` (where the runtime reports it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gpu_step import LLAMA_3_2_1B, TINY  # noqa: E402


def generate(args):
    import jax
    import numpy as np

    from jaxalign import models, sampling

    cfg = models.ModelConfig.from_hf(
        dict(TINY if args.tiny else LLAMA_3_2_1B), dtype="bfloat16", param_dtype="bfloat16"
    )
    params = jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.key(0))
    model = models.Transformer(cfg)
    p, n = (16, 16) if args.tiny else (128, 256)
    out = {}
    for batch in (64, 256):
        gen = sampling.make_generate_fn(model, max_new_tokens=n, temperature=0.0, eos_ids=(), compact=False)
        ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, p)).astype(np.int32)
        seg = np.ones_like(ids)
        jax.block_until_ready(gen(params, ids, seg, None))  # compile
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            res = jax.block_until_ready(gen(params, ids, seg, None))
        dt = (time.perf_counter() - t0) / reps
        out[f"generate/batch{batch}_tokens_per_s"] = float(np.sum(res.lengths)) / dt
        out[f"generate/batch{batch}_s"] = dt
    return out


def plan(args):
    import jax

    from jaxalign import defaults, plan as plan_lib, sharding
    from jaxalign.trainers import loop

    work = args.workdir
    c = defaults.load_config_file(os.path.join(work, "config.py"))
    platform = jax.devices()[0].platform
    topo = plan_lib.parse_topology(f"{jax.device_count()}x{'gpu' if platform == 'gpu' else platform}")
    predicted = plan_lib.make_plan(c, topo).total
    mesh = sharding.make_mesh(*loop.builder(c).validate(c, jax.device_count()), devices=jax.devices())
    with jax.set_mesh(mesh):
        run, state, step = loop.build(c, mesh)
        for _ in range(2):
            state, metrics, _ = loop.one_step(run, step, state)
        jax.block_until_ready(state)
        run.batches.close()
    stats = jax.devices()[0].memory_stats() or {}
    measured = stats.get("peak_bytes_in_use")
    return {
        "plan/predicted_gib": predicted / 2**30,
        "plan/measured_peak_gib": measured / 2**30 if measured else None,
        "plan/ratio": predicted / measured if measured else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["generate", "plan"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--workdir", default="", help="plan: gpu_step.py's workdir (its config.py and data)")
    args = ap.parse_args()
    import jax

    result = {"part": args.part, "device": jax.devices()[0].device_kind, "devices": jax.device_count()}
    result.update(generate(args) if args.part == "generate" else plan(args))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
