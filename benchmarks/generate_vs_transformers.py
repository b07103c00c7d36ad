"""Greedy generation throughput: jaxalign's KV-cache sampler vs transformers' `generate`, CPU.

  python benchmarks/generate_vs_transformers.py                  # 4-layer d=256 Llama, V=1000
  python benchmarks/generate_vs_transformers.py --batches=8,32 --prompt_len=32 --new_tokens=128 --reps=3

Both sides: the same random-init LlamaForCausalLM (seeded), saved once by transformers and loaded by
jaxalign with `checkpoints.hf.load_hf_model`; the same random prompts (no padding); greedy decoding of
exactly `new_tokens` tokens (jaxalign: no EOS ids; transformers: `min_new_tokens = max_new_tokens`),
float32. jaxalign is timed after compilation, transformers after one warm-up call; the two are run
alternately `--reps` times (on a shared machine both then see the same background load) and the table
gives tokens/s of the fastest run (closest to an idle machine) and, in brackets, of the median run.
tokens/s = batch × new_tokens / time (prefill included on both sides). The greedy tokens of the two
are compared as a check that both run the same model (random models have near-ties, so a late
divergence can happen; the first-token agreement should be ~100%).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_model(d, args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 4,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)


def jax_runner(d, args):
    """Returns batch -> (compile seconds, run() -> tokens [B, N])."""
    import jax
    import numpy as np

    from jaxalign.checkpoints import hf
    from jaxalign.models import Transformer
    from jaxalign.sampling import make_generate_fn

    config, params = hf.load_hf_model(d)
    gen = make_generate_fn(
        Transformer(config),
        max_new_tokens=args.new_tokens,
        temperature=0.0,
        eos_ids=(),
        cache_dtype=args.cache_dtype,
        cache_buckets=args.cache_buckets,
    )

    def make(prompts):
        ids = np.asarray(prompts, np.int32)
        seg = np.ones_like(ids)
        t0 = time.perf_counter()
        compiled = gen.lower(params, ids, seg, None).compile()
        compile_s = time.perf_counter() - t0
        return compile_s, lambda: np.asarray(jax.block_until_ready(compiled(params, ids, seg, None)).tokens)

    return make


def torch_runner(d, args):
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()

    def make(prompts):
        ids = torch.tensor(np.asarray(prompts), dtype=torch.long)

        def run():
            with torch.inference_mode():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                    pad_token_id=0,
                )
            return out[:, ids.shape[1] :].numpy()

        run()  # warm-up
        return run

    return make


def timed(run):
    t0 = time.perf_counter()
    out = run()
    return time.perf_counter() - t0, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32])
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--cache_dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="jaxalign's KV cache dtype (bfloat16 halves the cache reads that bound large batches)",
    )
    p.add_argument("--cache_buckets", type=int, default=1, help="see make_generate_fn")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    args = p.parse_args()

    import numpy as np

    rng = np.random.default_rng(0)
    prompts = rng.integers(3, args.vocab, (max(args.batches), args.prompt_len))
    results = {}
    with tempfile.TemporaryDirectory() as d:
        make_model(d, args)
        make_jax, make_torch = jax_runner(d, args), torch_runner(d, args)
        for b in args.batches:
            compile_s, run_jax = make_jax(prompts[:b])
            run_torch = make_torch(prompts[:b])
            run_jax()
            tj, tt = [], []
            for _ in range(args.reps):  # interleaved, so both sides see the same background load
                t, tok_j = timed(run_jax)
                tj.append(t)
                t, tok_t = timed(run_torch)
                tt.append(t)
            results[b] = (tj, tt, compile_s, tok_j, tok_t)

    import jax

    print(
        f"\nLlama {args.layers} layers, d={args.hidden}, V={args.vocab}; prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, greedy, float32 (jaxalign KV cache {args.cache_dtype}, "
        f"{args.cache_buckets} bucket(s)); "
        f"{os.cpu_count()} CPU cores, jax "
        f"{jax.__version__} on {jax.devices()[0].platform}, torch threads {args.threads}; "
        f"{args.reps} interleaved runs each, tokens/s from the fastest (median in brackets)"
    )
    print(
        f"{'batch':>5} | {'jaxalign tok/s':>20} {'compile s':>9} | {'transformers tok/s':>20} | "
        f"{'speed-up':>15} | {'same tokens':>11} {'same 1st':>8}"
    )
    for b in args.batches:
        tj, tt, compile_s, tok_j, tok_t = results[b]
        n = b * args.new_tokens
        rate = lambda ts: f"{n / min(ts):>8.0f} ({n / statistics.median(ts):>8.0f})"
        speed = f"{min(tt) / min(tj):>5.1f}x ({statistics.median(tt) / statistics.median(tj):>5.1f}x)"
        print(
            f"{b:>5} | {rate(tj):>20} {compile_s:>9.1f} | {rate(tt):>20} | {speed:>15} | "
            f"{(tok_j == tok_t).mean():>11.1%} {(tok_j[:, 0] == tok_t[:, 0]).mean():>8.0%}"
        )


if __name__ == "__main__":
    main()
