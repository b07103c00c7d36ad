"""Tokens/s and model-FLOPs utilisation of a config's train step (SFT, DPO, ...), against the measured peak.

  python benchmarks/step_throughput.py --config=configs/dpo.py --steps=20
  python benchmarks/step_throughput.py --config=configs/sft.py --config.train.batch_size=64

Peak = the best of a few large float32 (or bf16 on accelerators) matmuls timed here, so MFU is relative
to what this machine's XLA can actually do. Model FLOPs per trained token: 6·N (forward + backward) plus
attention 12·L·T·D; objectives with a reference forward (DPO, KTO) add 2·N + 4·L·T·D per token.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")


def measure_peak_flops(dtype="float32", n=2048, repeats=5):
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def main(argv):
    del argv
    import jax
    import numpy as np
    from jaxalign import registry, sharding
    from jaxalign.trainers import loop

    config = _CONFIG.value
    mesh = sharding.make_mesh(*loop.builder(config).validate(config, jax.device_count(), jax.process_count()))
    with jax.set_mesh(mesh):
        # The loop's own run, state and jitted step (sharded, state donated, reference not).
        run, state, step = loop.build(config, mesh)
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        batches = [run.batches.next(state)[0] for _ in range(4)]
        run.batches.close()
        for i in range(2):
            state, m = step(state, batches[i % 4], run.ref_params)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for i in range(_STEPS.value):
            state, m = step(state, batches[i % 4], run.ref_params)
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t0) / _STEPS.value

    b0 = jax.device_get(batches[0])
    seq_keys = [k for k in b0 if k.endswith("input_ids")]
    tokens = sum(int(np.prod(b0[k].shape)) for k in seq_keys)  # padded tokens processed
    real = sum(int((b0[k.replace("input_ids", "segment_ids")] > 0).sum()) for k in seq_keys)
    mc = run.model_config
    n_embed = mc.vocab_size * mc.hidden_size
    t_len = b0[seq_keys[0]].shape[1]
    attn = 12 * mc.num_layers * t_len * mc.hidden_size
    per_token = 6 * (n_params - (0 if mc.tie_word_embeddings else n_embed)) + attn
    if registry.get(config.objective).reference:  # reference forward
        per_token += 2 * (n_params - (0 if mc.tie_word_embeddings else n_embed)) + attn // 3
    peak = measure_peak_flops() * jax.device_count()
    flops = per_token * tokens / dt
    print(
        f"objective={config.objective} devices={jax.device_count()} ({jax.devices()[0].platform}) "
        f"params={n_params / 1e6:.2f}M batch={config.train.batch_size} seq_len={t_len}"
    )
    print(
        f"step_time_ms={dt * 1e3:.1f} tokens_per_s={tokens / dt:,.0f} (non-pad {real / dt:,.0f}) "
        f"model_TFLOP/s={flops / 1e12:.3f} peak_TFLOP/s={peak / 1e12:.3f} MFU={flops / peak:.1%}"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
