"""Memory of the log-prob path at Llama-3's vocabulary: whole logits vs the chunked LM head.

  python benchmarks/large_vocab_memory.py                  # DPO and SFT, V = 128,256, T = 1024
  python benchmarks/large_vocab_memory.py --vocab=151936   # Qwen2.5's vocabulary

Compiles the gradient of the DPO loss (padded pairs, chosen + rejected in one [2B, T] pass) and of the
SFT loss for a small Llama-shaped model (hidden 256, 2 layers; the LM head is what matters here) with
`logits_chunk=-1` (whole [B, T, V] logits) and `logits_chunk=0` (auto: chunks of positions), and prints
XLA's compiled memory analysis: temporaries (activations, logits and their gradient) and arguments. No
weights are trained; shapes only, then one real run of each to check that the losses agree.
"""

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxalign import losses, models, registry  # noqa: E402
from jaxalign.trainers import objectives  # noqa: E402


def batch(kind, b, t, vocab):
    k = jax.random.split(jax.random.key(0), 2)
    row = lambda key: {
        "input_ids": jax.random.randint(key, (b, t), 0, vocab),
        "targets": jax.random.randint(key, (b, t), 0, vocab),
        "loss_mask": jnp.ones((b, t)),
        "positions": jnp.broadcast_to(jnp.arange(t), (b, t)),
        "segment_ids": jnp.ones((b, t), jnp.int32),
    }
    if kind == "preference":
        return {
            **{"chosen_" + n: v for n, v in row(k[0]).items()},
            **{"rejected_" + n: v for n, v in row(k[1]).items()},
        }
    return row(k[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4, help="pairs (DPO) or sequences (SFT)")
    args = ap.parse_args()
    cfg = models.ModelConfig(
        vocab_size=args.vocab,
        hidden_size=256,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        head_dim=64,
        intermediate_size=512,
    )
    params = models.init_params(cfg, jax.random.key(0))
    logits_gib = 2 * args.batch * args.length * args.vocab * 4 / 2**30
    print(
        f"V={args.vocab} T={args.length} B={args.batch}: whole float32 logits of a DPO pass [2B, T, V] = "
        f"{logits_gib:.2f} GiB; auto chunk = {losses.auto_chunk(2 * args.batch, args.length, args.vocab)} positions"
    )
    print(f"{'objective':9} {'logits_chunk':>12} {'temp GiB':>9} {'args GiB':>9} {'loss':>10}")
    for objective, hp in (("dpo", dict(beta=0.1, loss_type="sigmoid")), ("sft", {})):
        b = batch(registry.get(objective).data, args.batch, args.length, args.vocab)
        seen = []
        for chunk in (-1, 0):
            model = models.Transformer(dataclasses.replace(cfg, logits_chunk=chunk))
            fn = jax.jit(
                jax.value_and_grad(getattr(objectives, registry.get(objective).loss)(model, hp), has_aux=True)
            )
            mem = fn.lower(params, params, b).compile().memory_analysis()
            (loss, _), _ = fn(params, params, b)
            seen.append(float(loss))
            print(
                f"{objective:9} {chunk:12d} {mem.temp_size_in_bytes / 2**30:9.2f} "
                f"{mem.argument_size_in_bytes / 2**30:9.2f} {float(loss):10.4f}",
                flush=True,
            )
        assert abs(seen[0] - seen[1]) <= 1e-4 * max(1.0, abs(seen[0])), seen


if __name__ == "__main__":
    main()
