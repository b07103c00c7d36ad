"""Generation throughput: jaxalign's KV-cache sampler vs transformers' `generate`, CPU.

  python benchmarks/generate_vs_transformers.py                  # 4-layer d=256 Llama, V=1000
  python benchmarks/generate_vs_transformers.py --batches=8,32 --prompt_len=32 --new_tokens=128 --reps=3
  python benchmarks/generate_vs_transformers.py --batches=16,64,256 --lengths=var   # variable lengths

Both sides: the same random-init LlamaForCausalLM (seeded), saved once by transformers and loaded by
jaxalign with `checkpoints.hf.load_hf_model`; the same random prompts (no padding); greedy decoding of
exactly `new_tokens` tokens (jaxalign: no EOS ids; transformers: `min_new_tokens = max_new_tokens`),
float32. jaxalign is timed after compilation, transformers after one warm-up call; the two are run
alternately `--reps` times (on a shared machine both then see the same background load) and the table
gives tokens/s of the fastest run (closest to an idle machine) and, in brackets, of the median run.
tokens/s = batch × new_tokens / time (prefill included on both sides). The greedy tokens of the two
are compared as a check that both run the same model (random models have near-ties, so a late
divergence can happen; the first-token agreement should be ~100%).

`--lengths` (default fixed):
  * fixed: the above (greedy, exactly `new_tokens` tokens per row).
  * var: every row stops at the first of 26 stop ids, EOS id 2 plus the 25 ids `STOP_EXTRA` (spread evenly
    over the vocabulary), or at `new_tokens`: jaxalign `make_generate_fn(eos_ids=<the 26>)`, transformers
    `generate(eos_token_id=<the 26>)` with no `min_new_tokens`. Greedy decoding of a random model tends to
    loop (the same few tokens forever, so most rows never or always stop), so var mode samples instead,
    on both sides: temperature 1, no top-k / top-p (jaxalign `temperature=1.0` with the fixed key
    `jax.random.key(seed)`; transformers `do_sample=True, temperature=1.0, top_k=0, top_p=1.0` after
    `torch.manual_seed(seed)` before every run), so every run of a side yields the same lengths. The
    random model's next-token distribution is near uniform, so each token is a stop id with p ~ 26/V and
    lengths are ~ geometric (mean ~ 37 of <= 128 at V=1000). tokens/s = the tokens each side really
    generated (up to and including its stop token, summed over rows) / time, so each side is credited only
    for its own tokens (the two sample with different RNGs, so their lengths differ a little: both means
    and stop rates are printed); speed-up = the ratio of the two tokens/s. Token agreement is not
    compared (different RNGs).

After the table, for jaxalign at each batch B, the matmul-bound time of one decode step: one jitted
program running exactly the decode step's dense products at batch B with the model's shapes, chained as
in the model (per layer x[B,D] @ q[D,H*Dh], k and v [D,K*Dh], o [H*Dh,D], gate and up [D,F], down [F,D],
then the LM head [D,V]; only adds and one multiply between them, no attention, norms or sampling),
median of 50 calls. Printed next to jaxalign's measured time per decode step (fixed: the fastest
generation time / new_tokens; var: / the longest row's length, the number of decode steps its loop ran;
both include the prefill) and their ratio (the goal: within 1.5x).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EOS = 2


def stop_ids(args):
    """fixed: none (exactly new_tokens tokens); var: EOS + 25 ids spread evenly over the vocabulary."""
    import numpy as np

    if args.lengths == "fixed":
        return []
    extra = np.linspace(10, args.vocab - 10, 25).round().astype(int).tolist()
    ids = [EOS] + extra
    assert len(set(ids)) == 26 and min(extra) > 2, ids
    return ids


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
    """Returns prompts -> (compile seconds, run() -> (tokens [B, N], lengths [B])), and the model config."""
    import jax
    import numpy as np

    from jaxalign.checkpoints import hf
    from jaxalign.models import Transformer
    from jaxalign.sampling import make_generate_fn

    config, params = hf.load_hf_model(d)
    var = args.lengths == "var"
    gen = make_generate_fn(
        Transformer(config),
        max_new_tokens=args.new_tokens,
        temperature=1.0 if var else 0.0,
        eos_ids=tuple(stop_ids(args)),
        cache_dtype=args.cache_dtype,
        cache_buckets=args.cache_buckets,
    )
    rng = jax.random.key(args.seed) if var else None

    def make(prompts):
        ids = np.asarray(prompts, np.int32)
        seg = np.ones_like(ids)
        t0 = time.perf_counter()
        compiled = gen.lower(params, ids, seg, rng).compile()
        compile_s = time.perf_counter() - t0

        def run():
            out = jax.block_until_ready(compiled(params, ids, seg, rng))
            return np.asarray(out.tokens), np.asarray(out.lengths)

        return compile_s, run

    return make, config


def torch_runner(d, args):
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()

    stops = stop_ids(args)
    if stops:  # var: sampled, stops at any of the list
        kw = dict(eos_token_id=stops, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    else:  # fixed: greedy, exactly new_tokens
        kw = dict(min_new_tokens=args.new_tokens, do_sample=False)

    def lengths_of(tokens):
        """Tokens up to and including each row's first stop id (all of them if it has none)."""
        if not stops:
            return np.full(len(tokens), tokens.shape[1])
        hit = np.isin(tokens, stops)
        return np.where(hit.any(1), hit.argmax(1) + 1, tokens.shape[1])

    def make(prompts):
        ids = torch.tensor(np.asarray(prompts), dtype=torch.long)

        def run():
            torch.manual_seed(args.seed)
            with torch.inference_mode():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.new_tokens,
                    pad_token_id=0,
                    **kw,
                )
            tokens = out[:, ids.shape[1] :].numpy()
            return tokens, lengths_of(tokens)

        run()  # warm-up
        return run

    return make


def timed(run):
    t0 = time.perf_counter()
    out = run()
    return time.perf_counter() - t0, out


def stop_rate(tokens, lengths, stops):
    """Share of rows whose last generated token is a stop id."""
    import numpy as np

    last = tokens[np.arange(len(tokens)), np.maximum(lengths, 1) - 1]
    return float(np.mean(np.isin(last, stops) & (lengths > 0)))


def matmul_bound(config, b, calls=50):
    """Median seconds of one jitted program running the decode step's dense products at batch `b` with
    the model's shapes, chained layer by layer as in the model (distinct weights per layer, so every
    weight is read once per call as in a real step)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    hq, hkv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    dtype = jnp.dtype(config.param_dtype)
    keys = iter(jax.random.split(jax.random.key(1), 7 * config.num_layers + 2))

    def w(*shape):
        return (0.02 * jax.random.normal(next(keys), shape, jnp.float32)).astype(dtype)

    layers = [
        dict(q=w(d, hq), k=w(d, hkv), v=w(d, hkv), o=w(hq, d), gate=w(d, f), up=w(d, f), down=w(f, d))
        for _ in range(config.num_layers)
    ]
    head = w(d, v)
    x = jax.random.normal(next(keys), (b, d), jnp.float32).astype(dtype)

    @jax.jit
    def step(layers, head, x):
        kv = []
        for p in layers:
            q, k, vv = x @ p["q"], x @ p["k"], x @ p["v"]
            kv += [k, vv]  # outputs (the cache writes), so that XLA keeps them
            x = x + q @ p["o"]
            x = x + ((x @ p["gate"]) * (x @ p["up"])) @ p["down"]
        return x @ head, kv

    jax.block_until_ready(step(layers, head, x))
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(step(layers, head, x))
        ts.append(time.perf_counter() - t0)
    flops = 2 * b * (config.num_layers * (d * (hq + 2 * hkv) + hq * d + 3 * d * f) + d * v)
    return float(np.median(ts)), flops


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument(
        "--batches",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[8, 32],
        help="comma-separated batch sizes, e.g. 16,64,256",
    )
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--lengths",
        default="fixed",
        choices=["fixed", "var"],
        help="fixed: greedy, exactly new_tokens per row; var: sampled (temperature 1), stop at any of 26 "
        "stop ids or new_tokens",
    )
    p.add_argument("--seed", type=int, default=0, help="var: the sampling seed of both sides")
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
    var = args.lengths == "var"
    results = {}
    with tempfile.TemporaryDirectory() as d:
        make_model(d, args)
        (make_jax, config), make_torch = jax_runner(d, args), torch_runner(d, args)
        for b in args.batches:
            compile_s, run_jax = make_jax(prompts[:b])
            run_torch = make_torch(prompts[:b])
            run_jax()
            tj, tt = [], []
            for _ in range(args.reps):  # interleaved, so both sides see the same background load
                t, (tok_j, len_j) = timed(run_jax)
                tj.append(t)
                t, (tok_t, len_t) = timed(run_torch)
                tt.append(t)
            results[b] = (tj, tt, compile_s, tok_j, tok_t, len_j, len_t)
            print(f"batch {b} done, load average {os.getloadavg()[0]:.2f}", flush=True)
        bounds = {b: matmul_bound(config, b) for b in args.batches}

    import jax

    stops = stop_ids(args)
    mode = (
        f"sampled (temperature 1, seed {args.seed}), stop at any of {len(stops)} ids {stops} or "
        f"{args.new_tokens} new tokens"
        if var
        else f"{args.new_tokens} new tokens, greedy"
    )
    print(
        f"\nLlama {args.layers} layers, d={args.hidden}, V={args.vocab}; prompt {args.prompt_len}, {mode}, "
        f"float32 (jaxalign KV cache {args.cache_dtype}, {args.cache_buckets} bucket(s)); "
        f"{os.cpu_count()} CPU cores, jax "
        f"{jax.__version__} on {jax.devices()[0].platform}, torch threads {args.threads}; "
        f"{args.reps} interleaved runs each, tokens/s from the fastest (median in brackets); load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if var:
        print(
            f"{'batch':>5} | {'jaxalign tok/s':>20} {'compile s':>9} | {'transformers tok/s':>20} | "
            f"{'speed-up':>15} | {'jax mean len':>12} {'stop':>5} | {'hf mean len':>11} {'stop':>5}"
        )
    else:
        print(
            f"{'batch':>5} | {'jaxalign tok/s':>20} {'compile s':>9} | {'transformers tok/s':>20} | "
            f"{'speed-up':>15} | {'same tokens':>11} {'same 1st':>8}"
        )
    for b in args.batches:
        tj, tt, compile_s, tok_j, tok_t, len_j, len_t = results[b]
        nj, nt = int(len_j.sum()), int(len_t.sum())  # real generated tokens (b * new_tokens when fixed)

        def rate(n, ts):
            return f"{n / min(ts):>8.0f} ({n / statistics.median(ts):>8.0f})"

        best = (nj / min(tj)) / (nt / min(tt))
        med = (nj / statistics.median(tj)) / (nt / statistics.median(tt))
        speed = f"{best:>5.1f}x ({med:>5.1f}x)"
        if var:
            stop_j, stop_t = stop_rate(tok_j, len_j, stops), stop_rate(tok_t, len_t, stops)
            print(
                f"{b:>5} | {rate(nj, tj):>20} {compile_s:>9.1f} | {rate(nt, tt):>20} | {speed:>15} | "
                f"{len_j.mean():>12.1f} {stop_j:>5.0%} | {len_t.mean():>11.1f} {stop_t:>5.0%}"
            )
        else:
            print(
                f"{b:>5} | {rate(nj, tj):>20} {compile_s:>9.1f} | {rate(nt, tt):>20} | {speed:>15} | "
                f"{(tok_j == tok_t).mean():>11.1%} {(tok_j[:, 0] == tok_t[:, 0]).mean():>8.0%}"
            )
    print(
        "\njaxalign's decode step vs its matmul-bound time (one jitted program of the step's dense products at "
        "batch B, median of 50 calls):"
    )
    print(
        f"{'batch':>5} | {'matmul-bound ms':>15} {'GFLOP/s':>8} | {'measured ms/step':>16} {'steps':>5} | "
        f"{'measured/bound':>14}"
    )
    for b in args.batches:
        tj, len_j = results[b][0], results[b][5]
        steps = int(len_j.max()) if var else args.new_tokens  # decode steps the loop ran
        per_step = min(tj) / max(steps, 1)
        bound, flops = bounds[b]
        print(
            f"{b:>5} | {1e3 * bound:>15.3f} {flops / bound / 1e9:>8.1f} | {1e3 * per_step:>16.3f} {steps:>5} | "
            f"{per_step / bound:>13.2f}x"
        )
    print(
        "measured ms/step = jaxalign's fastest generation time (prefill included) / "
        + ("the longest row's length (its loop's iterations)" if var else "new_tokens")
        + "; goal: within 1.5x of the bound."
    )


if __name__ == "__main__":
    main()
