"""Time to the first batch on a large preference file: lazy tokenization vs up front.

  python benchmarks/data_start.py                    # 1,000,000 pairs
  python benchmarks/data_start.py --rows=200000

Writes `--rows` preference rows (plain-string prompt/chosen/rejected, W-DPO-var-like word counts) as
JSONL, then times, with the embedded tokenizer, max_length 512:
  read + check  `jaxalign.data.read` (every row parsed and checked, as the trainers do first);
  lazy load     `data.load(..., lazy=True)` (the trainers' default for >= 50,000 rows);
  first batch   a padding-free global batch of 64 pairs through a `Prefetcher` (its examples tokenized);
  up front      `data.load(..., lazy=False)` on the first `--upfront_rows` rows, extrapolated to all rows
                (tokenizing everything before step 1, what every run did before).
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def write_rows(path, n, seed=0):
    rng = np.random.default_rng(seed)
    words = np.array(
        [
            "alpha",
            "plus",
            "minus",
            "seven",
            "three",
            "answer",
            "is",
            "the",
            "of",
            "number",
            "question",
            "what",
            "how",
            "many",
            "twelve",
            "sum",
            "four",
            "nine",
            "and",
            "then",
        ]
    )
    with open(path, "w") as f:
        for _ in range(n):
            p, c, r = (
                np.clip(rng.lognormal(m, s, 1).astype(int), lo, hi)[0]
                for m, s, lo, hi in ((3.0, 0.7, 3, 150), (3.6, 0.8, 2, 200), (3.6, 0.8, 2, 200))
            )
            f.write(
                json.dumps(
                    {
                        "prompt": " ".join(rng.choice(words, p)),
                        "chosen": " " + " ".join(rng.choice(words, c)),
                        "rejected": " " + " ".join(rng.choice(words, r)),
                    }
                )
                + "\n"
            )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--upfront_rows", type=int, default=20_000)
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()
    from jaxalign import data
    from jaxalign.data import embedded, pipeline

    root = args.workdir or tempfile.mkdtemp(prefix="data_start_")
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, f"pairs_{args.rows}.jsonl")
    if not os.path.exists(path):
        t = time.time()
        write_rows(path, args.rows)
        print(
            f"wrote {args.rows} rows to {path} ({os.path.getsize(path) / 2**20:.0f} MiB) in {time.time() - t:.0f}s"
        )
    tok = embedded.load_tokenizer()
    kw = dict(kind="preference", tokenizer=tok, max_length=512, max_prompt_length=256, packing=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    t0 = time.time()
    rows = data.read(path, kind="preference")
    t1 = time.time()
    ds = data.load(rows, lazy=True, **kw)
    t2 = time.time()
    it = pipeline.Prefetcher(pipeline.BatchIterator(ds, 64, seed=0, pad_id=tok.pad_token_id))
    batch = next(it)
    t3 = time.time()
    for _ in range(9):
        next(it)
    t4 = time.time()
    it.close()
    print(
        f"read + check {t1 - t0:.1f}s; lazy load {t2 - t1:.1f}s; first batch {t3 - t2:.2f}s "
        f"({batch['input_ids'].shape[0]} rows of 512); next 9 batches {(t4 - t3) / 9:.3f}s each; "
        f"time to the first batch {t3 - t0:.1f}s"
    )
    head = pipeline.build_dataset([rows[i] for i in range(args.upfront_rows)], lazy=False, **kw)
    t5 = time.time()
    pipeline.build_dataset([rows[i] for i in range(args.upfront_rows)], lazy=False, **kw)
    t6 = time.time()
    del head
    per_row = (t6 - t5) / args.upfront_rows
    print(
        f"up front: {1e3 * per_row:.2f} ms per row -> {per_row * args.rows:.0f}s to tokenize all {args.rows} "
        f"rows before step 1 (+ read); load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
