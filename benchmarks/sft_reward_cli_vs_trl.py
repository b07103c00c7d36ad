"""SFT and reward-model steps as a user gets them: jaxalign's command line vs TRL's SFTTrainer and
RewardTrainer (CPU). A benchmark, not a test: it prints timings and asserts nothing about them.

  pip install -e ".[bench]"
  python benchmarks/sft_reward_cli_vs_trl.py                       # both objectives, 2 rounds, 40 steps
  python benchmarks/sft_reward_cli_vs_trl.py --objective=sft --steps=20 --log_every=5 --rounds=1
  python benchmarks/sft_reward_cli_vs_trl.py --jax_args="--config.data.packing=False"   # padded rows

What runs: the model and tokenizer of `dpo_cli_vs_trl.py` (random Llama d=256, 4 layers, 8 heads × 32,
MLP 688, vocab 1024, untied, float32; byte-level BPE), the same rows on both sides, run alternately in
rounds; jaxalign's time is `perf/step_time_s` of its `metrics.jsonl` after the first (compiling) record,
TRL's the median `on_step_begin` → `on_step_end` span over the same steps (`cli_runner.StepTimer`).

Workloads (both chat-like variable length, the W-DPO-var distribution of `dpo_cli_vs_trl.py`:
prompt words ~ lognormal(3.0, 0.7) clipped to [3, 150], completion words ~ lognormal(3.6, 0.8) clipped
to [2, 200]; `max_length=512`, prompts trimmed from the left to at most 256 tokens):
  * sft (W-SFT): 8 prompt/completion rows per step, loss on completion tokens only (jaxalign's default;
    TRL `completion_only_loss=True`), token-mean over the batch on both sides. TRL pads each batch to its
    longest row (`padding_free=False`, `packing=False`, its defaults); jaxalign packs each batch's rows
    into the fewest rows of 512 (`data.packing=True`, the SFT default now).
  * reward (W-RM): 8 pairs per step, Bradley-Terry loss on the score read at each sequence's EOS.
    TRL's RewardTrainer drops pairs longer than `max_length` instead of truncating them, so the generator
    keeps only pairs whose sequences fit in 512 tokens: both sides train on the same whole sequences.
    The score head is a fresh random `score` layer on both sides (TRL: `AutoModelForSequenceClassification
    (num_labels=1)` from the causal-LM directory; jaxalign: `head="score"` from the same directory).
Shared settings: AdamW lr 1e-5, no warmup, linear decay to 0, eps 1e-8, weight decay 0, clip 1.0,
float32 (TRL `bf16=False`), no gradient checkpointing on either side, no eval, no export. The table
prints per objective the medians over rounds, TRL/jaxalign and the load averages.
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
import cli_runner  # noqa: E402
import dpo_cli_vs_trl as dpo  # noqa: E402  (model, tokenizer, lexicon, row maker)

BATCH = 8
LR = 1e-5
MAX_LENGTH, MAX_PROMPT = 512, 256
OBJECTIVES = ("sft", "reward")


def make_rows(objective, n, tok, words, p, seed):
    """W-SFT prompt/completion rows, or W-RM preference rows that fit in MAX_LENGTH tokens."""
    import numpy as np

    rng = np.random.default_rng([seed, 3])
    maker = dpo.RowMaker(tok, words, p, rng)
    count = lambda text, special: len(tok(text, add_special_tokens=special)["input_ids"])
    rows = []
    while len(rows) < n:
        prompt = " ".join(
            maker.trim_left(
                maker.sample(int(np.clip(round(rng.lognormal(3.0, 0.7)), 3, 150))), MAX_PROMPT - 1
            )
        )
        sides = [
            " " + " ".join(maker.sample(int(np.clip(round(x), 2, 200)))) for x in rng.lognormal(3.6, 0.8, 2)
        ]
        if objective == "sft":
            rows.append({"prompt": prompt, "completion": sides[0]})
        elif max(count(prompt, True) + count(s, False) + 1 for s in sides) <= MAX_LENGTH:
            rows.append({"prompt": prompt, "chosen": sides[0], "rejected": sides[1]})
    return rows


def jaxalign_token_count(objective, data_path, tok):
    """Tokens and trained tokens of the sequences jaxalign's CLI builds from the rows."""
    sys.path.insert(0, REPO)
    from jaxalign.data import pipeline

    kind = "sft" if objective == "sft" else "preference"
    ds = pipeline.build_dataset(
        data_path, kind=kind, tokenizer=tok, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT
    )
    seg = [v for k, v in ds.arrays.items() if k.endswith("segment_ids")]
    tokens = sum(int((s > 0).sum()) + len(s) for s in seg)  # L - 1 pairs per sequence, + 1 each
    return {"sequences": sum(len(s) for s in seg), "tokens": tokens, "truncated": ds.num_truncated}


def run_jaxalign(args, objective, model_dir, data_path, workdir):
    cmd = [
        "-m",
        "jaxalign.main",
        f"--config=configs/{objective}.py",
        f"--workdir={workdir}",
        f"--config.model.path={model_dir}",
        f"--config.data.train={data_path}",
        "--config.data.eval=",
        f"--config.data.max_length={MAX_LENGTH}",
        f"--config.data.max_prompt_length={MAX_PROMPT}",
        f"--config.train.batch_size={BATCH}",
        "--config.train.grad_accum_steps=1",
        f"--config.train.num_steps={args.steps}",
        f"--config.train.log_every={args.log_every}",
        "--config.train.checkpoint_every=0",
        "--config.train.keep_checkpoints=1",
        "--config.train.export_hf=False",
        f"--config.optimizer.learning_rate={LR}",
        "--config.optimizer.warmup_steps=0",
        "--config.optimizer.schedule=linear",
        "--config.optimizer.end_lr_ratio=0.0",
        "--config.model.dtype=float32",
        "--config.model.param_dtype=float32",
    ]
    cmd += shlex.split(args.jax_args)
    out = cli_runner.run_jaxalign(cmd, workdir, args.jaxalign_root)
    key = "train/loss"
    losses = [r[key] for r in out["recs"] if key in r]
    out["loss"] = statistics.fmean(losses) if losses else float("nan")
    return out


def run_trl_side(args):
    """The `--side=trl` subprocess: trains, times each step, writes a JSON result to `--result`."""
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    la0 = cli_runner.loadavg()
    with open(args.data) as f:
        rows = [json.loads(line) for line in f]
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    common = dict(
        output_dir=os.path.join(args.workdir, "out"),
        max_steps=args.steps,
        num_train_epochs=1,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        optim="adamw_torch",
        max_length=MAX_LENGTH,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        dataloader_num_workers=0,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=args.seed,
    )
    timer = cli_runner.StepTimer.make()
    if args.objective == "sft":
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
        config = trl.SFTConfig(packing=False, padding_free=False, completion_only_loss=True, **common)
        trainer = trl.SFTTrainer(
            model=model,
            args=config,
            processing_class=tok,
            train_dataset=Dataset.from_list(rows),
            callbacks=[timer],
        )
        ids = [len(x) for x in trainer.train_dataset["input_ids"]]
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            args.model_dir, num_labels=1, dtype=torch.float32
        )
        model.config.pad_token_id = tok.pad_token_id
        config = trl.RewardConfig(center_rewards_coefficient=None, **common)
        trainer = trl.RewardTrainer(
            model=model,
            args=config,
            processing_class=tok,
            train_dataset=Dataset.from_list(rows),
            callbacks=[timer],
        )
        ids = [len(x) for k in ("chosen_ids", "rejected_ids") for x in trainer.train_dataset[k]]
    t0 = time.time()
    trainer.train()
    result = {
        **timer.summary(args.log_every),
        "wall_s": time.time() - t0,
        "load_start": la0,
        "load_end": cli_runner.loadavg(),
        "torch_threads": torch.get_num_threads(),
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "sequences": len(ids),
        "tokens": int(sum(min(n, MAX_LENGTH) for n in ids)),
    }
    with open(args.result, "w") as f:
        json.dump(result, f)


def parse_args():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--objective", default="both", choices=[*OBJECTIVES, "both"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--log_every", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jax_args", default="", help="extra jaxalign flags, appended verbatim")
    ap.add_argument("--jaxalign_root", default=REPO)
    ap.add_argument("--workdir", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--side", default="", choices=["", "trl"], help=argparse.SUPPRESS)
    for name in ("model_dir", "data", "result"):
        ap.add_argument(f"--{name}", default="", help=argparse.SUPPRESS)
    return ap.parse_args()


def main():
    args = parse_args()
    if args.side == "trl":
        run_trl_side(args)
        return
    if args.steps < 2 * args.log_every:
        sys.exit(f"--steps={args.steps} must be >= 2 * --log_every={args.log_every}")
    objectives = list(OBJECTIVES) if args.objective == "both" else [args.objective]
    root = args.workdir or tempfile.mkdtemp(prefix="sft_reward_cli_vs_trl_")
    model_dir = os.path.join(root, "model")
    tok, words, p = dpo.make_model_and_tokenizer(model_dir, args.seed)
    print(
        f"workdir {root}; {BATCH} rows (pairs for reward) per step, {args.steps} steps, timed steps "
        f"{args.log_every + 1}-{args.steps}; cpus={os.cpu_count()}; jax_args={args.jax_args!r}"
    )
    data = {}
    for obj in objectives:
        path = os.path.join(root, f"{obj}.jsonl")
        with open(path, "w") as f:
            for r in make_rows(obj, args.steps * BATCH, tok, words, p, args.seed):
                f.write(json.dumps(r) + "\n")
        data[obj] = path
        n = jaxalign_token_count(obj, path, tok)
        print(
            f"[{obj}] jaxalign: {n['sequences']} sequences, {n['tokens']} tokens "
            f"({n['tokens'] / n['sequences']:.1f} per sequence), {n['truncated']} truncated",
            flush=True,
        )

    runs = {obj: [] for obj in objectives}
    for rnd in range(args.rounds):
        for obj in objectives:
            print(f"round {rnd + 1}/{args.rounds} {obj}: jaxalign", flush=True)
            jx = run_jaxalign(args, obj, model_dir, data[obj], os.path.join(root, f"r{rnd}_{obj}_jaxalign"))
            print(
                f"  {jx['describe']}\n  jaxalign: {1e3 * jx['step_s']:.1f} ms/step (records "
                f"{[(s, round(1e3 * t, 1)) for s, t in jx['records']]} ms), load {jx['load_start']:.2f} -> "
                f"{jx['load_end']:.2f}",
                flush=True,
            )
            print(f"round {rnd + 1}/{args.rounds} {obj}: TRL", flush=True)
            tr = cli_runner.run_trl(
                os.path.abspath(__file__),
                [
                    f"--objective={obj}",
                    f"--model_dir={model_dir}",
                    f"--data={data[obj]}",
                    f"--steps={args.steps}",
                    f"--log_every={args.log_every}",
                    f"--seed={args.seed}",
                ],
                os.path.join(root, f"r{rnd}_{obj}_trl"),
                REPO,
            )
            print(
                f"  TRL {tr['trl']}: {1e3 * tr['step_s']:.1f} ms/step (steps {tr['timed_steps']}; {tr['sequences']} "
                f"sequences, {tr['tokens']} tokens), load {tr['load_start']:.2f} -> {tr['load_end']:.2f}; "
                f"round TRL/jaxalign = {tr['step_s'] / jx['step_s']:.2f}",
                flush=True,
            )
            runs[obj].append({"jaxalign": jx, "trl": tr})

    print(
        f"\nmedian over {args.rounds} round(s), steps {args.log_every + 1}-{args.steps}, CPU "
        f"({os.cpu_count()} cores):"
    )
    print(
        f"{'objective':9} {'jaxalign ms':>11} {'TRL ms':>8} {'TRL/jax':>7}  load avg (start->end) jaxalign | TRL"
    )
    table = {}
    for obj in objectives:
        jx = statistics.median(r["jaxalign"]["step_s"] for r in runs[obj])
        tr = statistics.median(r["trl"]["step_s"] for r in runs[obj])
        loads = " ; ".join(
            f"{r['jaxalign']['load_start']:.2f}->{r['jaxalign']['load_end']:.2f} | "
            f"{r['trl']['load_start']:.2f}->{r['trl']['load_end']:.2f}"
            for r in runs[obj]
        )
        table[obj] = {"jaxalign_ms": 1e3 * jx, "trl_ms": 1e3 * tr, "ratio": tr / jx}
        print(f"{obj:9} {1e3 * jx:11.1f} {1e3 * tr:8.1f} {tr / jx:7.2f}  {loads}")
    print("TRL/jaxalign = jaxalign's speed-up (goal >= 2.0).")
    if args.out:
        for r in runs.values():
            for x in r:
                x["jaxalign"].pop("recs", None)
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
