"""Memory of the log-prob path at Llama-3's vocabulary: whole logits vs the chunked LM head, and the
head at every position vs only at the loss's positions (`model.head_positions=loss`).

  python benchmarks/large_vocab_memory.py                  # DPO and SFT, V = 128,256, T = 1024
  python benchmarks/large_vocab_memory.py --vocab=151936   # Qwen2.5's vocabulary

Compiles the gradient of the DPO loss (padded pairs, chosen + rejected in one [2B, T] pass) and of the
SFT loss for a small Llama-shaped model (hidden 256, 2 layers; the LM head is what matters here) with
`logits_chunk=-1` (whole [B, T, V] logits) and `logits_chunk=0` (auto: chunks of positions), each with
the head at every position and at the completion positions only (the first `--prompt_share` of each row
is a prompt the loss does not read: a `head_index` of the rest, `jaxalign.data.batching.with_head_index`), and prints XLA's compiled memory
analysis and the LM head's FLOPs (forward + backward): temporaries (activations, logits and their gradient) and arguments. No
weights are trained; shapes only, then one real run of each to check that the losses agree.
"""

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import numpy as np  # noqa: E402

from jaxalign import losses, models, registry  # noqa: E402
from jaxalign.data import batching  # noqa: E402
from jaxalign.trainers import objectives  # noqa: E402


def batch(kind, b, t, vocab, prompt):
    k = jax.random.split(jax.random.key(0), 2)
    row = lambda key: {
        "input_ids": jax.random.randint(key, (b, t), 0, vocab),
        "targets": jax.random.randint(key, (b, t), 0, vocab),
        "loss_mask": jnp.broadcast_to(jnp.arange(t) >= prompt, (b, t)).astype(jnp.int32),
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
    ap.add_argument("--prompt_share", type=float, default=0.5, help="share of each row that is prompt")
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
    prompt = int(args.prompt_share * args.length)
    fraction = 1.0 - prompt / args.length
    print(
        f"{'objective':9} {'logits_chunk':>12} {'head at':>8} {'temp GiB':>9} {'args GiB':>9} {'head TFLOP':>10} {'loss':>10}"
    )
    for objective, hp in (("dpo", dict(beta=0.1, loss_type="sigmoid")), ("sft", {})):
        b = batch(registry.get(objective).data, args.batch, args.length, args.vocab, prompt)
        rows = 2 * args.batch if objective == "dpo" else args.batch
        seen = []
        for chunk, frac in ((-1, 1.0), (-1, fraction), (0, 1.0), (0, fraction)):
            model = models.Transformer(dataclasses.replace(cfg, logits_chunk=chunk))
            fn = jax.jit(
                jax.value_and_grad(getattr(objectives, registry.get(objective).loss)(model, hp), has_aux=True)
            )
            x = b if frac == 1 else batching.with_head_index(jax.tree.map(np.asarray, b), frac)
            mem = fn.lower(params, params, x).compile().memory_analysis()
            (loss, _), _ = fn(params, params, x)
            seen.append(float(loss))
            positions = rows * batching.head_width(frac, args.length)
            head_tflop = 3 * 2 * positions * cfg.hidden_size * args.vocab / 1e12
            print(
                f"{objective:9} {chunk:12d} {'all' if frac == 1 else 'loss':>8} "
                f"{mem.temp_size_in_bytes / 2**30:9.2f} {mem.argument_size_in_bytes / 2**30:9.2f} "
                f"{head_tflop:10.3f} {float(loss):10.4f}",
                flush=True,
            )
        assert max(seen) - min(seen) <= 1e-4 * max(1.0, abs(seen[0])), seen


if __name__ == "__main__":
    main()
