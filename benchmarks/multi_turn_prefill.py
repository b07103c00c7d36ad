"""Multi-turn episodes on the kept KV (jaxalign/envs/episodes.py) vs re-prefilling every turn's context.

    python benchmarks/multi_turn_prefill.py [--rows=128] [--rounds=3]

The configs/grpo_tools.py episodes (checkpoints/sft_tools, the calculator, held-out multi-digit prompts,
greedy so both engines give the same tokens, which is checked): once as jaxalign runs them (each turn
prefills only what the environment appended), once with every later turn sampled from scratch on the whole
context so far as its prompt (what an engine without a kept cache does). Alternating rounds; prints the
tokens each engine feeds the model per episode and the wall time per episode batch, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from jaxalign import checkpoints, defaults, models, sampling, sharding
from jaxalign.envs.episodes import Episodes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Reprefill:
    """Stands in for the engine's `first` / `cont`: every later turn is a fresh prompt of the whole context
    (prompt + turns + appended tokens), prefilled from its first token."""

    def __init__(self, eps, model, length):
        self.first_fn, self.length, self.fed = eps.first_greedy, length, 0
        kw = dict(max_new_tokens=eps.max_new_tokens, eos_ids=EOS, pad_id=eps.pad_id, compact=False)
        self.fresh = sampling.make_generate_fn(model, temperature=0.0, keep_cache=True, **kw)

    def first(self, params, ids, seg, rng):
        out, cache = self.first_fn(params, ids, seg, rng)
        ids, seg = np.asarray(ids), np.asarray(seg)
        self.ctx = [list(i[s == 1]) for i, s in zip(ids, seg)]
        self.last = jax.device_get(out)
        self.fed += int(seg.sum()) + int(self.last.mask.sum())  # prefilled + decoded
        return out, cache

    def cont(self, params, cache, starts, ids, seg, rng):
        ids, seg = np.asarray(ids), np.asarray(seg)
        chunks = []
        for r in range(len(self.ctx)):
            if seg[r].sum() == 0:  # done
                chunks.append([])
                continue
            self.ctx[r] += list(self.last.tokens[r][self.last.mask[r] == 1]) + list(ids[r][seg[r] == 1][1:])
            chunks.append(self.ctx[r])
        p = sampling.left_pad(chunks, 0, length=self.length)
        out, cache = self.fresh(params, p["prompt_ids"], p["prompt_segment_ids"], rng)
        self.last = jax.device_get(out)
        self.fed += int(p["prompt_segment_ids"].sum()) + int(self.last.mask.sum())
        return out, cache


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--checkpoint", default="", help="the policy (default the config's start, sft_tools)")
    args = ap.parse_args()
    c = defaults.load_config_file(os.path.join(ROOT, "configs", "grpo_tools.py"))
    if args.checkpoint:
        with c.unlocked():
            c.model.path = args.checkpoint
    tok = checkpoints.load_tokenizer(c.model.path)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
        mcfg, params = checkpoints.load_hf_model(c.model.path, head="lm", mesh=mesh)
    model = models.Transformer(mcfg)
    global EOS
    EOS = sampling.eos_ids_of(tok)
    bs = sharding.batch_sharding(mesh)
    kept = Episodes.build(c, model, tok, mesh, bs, group=1, shared=False, eos_ids=EOS, pad_id=0)
    naive = Episodes.build(c, model, tok, mesh, bs, group=1, shared=False, eos_ids=EOS, pad_id=0)
    rp = Reprefill(naive, model, c.data.max_prompt_length + kept.width)
    naive.first_greedy, naive.cont_greedy = rp.first, rp.cont
    with open(c.data.eval) as f:
        rows = [json.loads(line) for line in f][: args.rows]
    batch = {
        "prompt": [r["prompt"] for r in rows],
        "answer": [r["answer"] for r in rows],
        "where": [""] * len(rows),
    }
    key = jax.random.key(0)
    a = kept.run(params, batch, key, greedy=True)  # warm-up (compiles) and the equality check
    rp.fed = 0
    b = naive.run(params, batch, key, greedy=True)
    fed_naive = rp.fed / len(rows)
    assert (a.tokens == b.tokens).all(), "the two engines disagree"
    times = {"kept KV": [], "re-prefill": []}
    for _ in range(args.rounds):
        for name, eps in (("kept KV", kept), ("re-prefill", naive)):
            t0 = time.perf_counter()
            eps.run(params, batch, key, greedy=True)
            times[name].append(time.perf_counter() - t0)
    load = os.getloadavg()[0]
    fed_kept = a.metrics["env/fed_tokens"]
    print(
        f"{len(rows)} episodes, {a.metrics['turns']:.2f} turns each, context {a.metrics['env/context_tokens']:.1f} tokens"
    )
    print(f"tokens through the model per episode: kept KV {fed_kept:.1f}, re-prefill {fed_naive:.1f}")
    for name, ts in times.items():
        print(
            f"{name:>10}: {np.median(ts) * 1e3:.0f} ms per batch (median of {len(ts)}: {[round(t * 1e3) for t in ts]})"
        )
    print(
        f"re-prefill / kept KV time: {np.median(times['re-prefill']) / np.median(times['kept KV']):.2f}x; load average {load:.2f}"
    )


if __name__ == "__main__":
    main()
