"""A GRPO training step as a user gets it: jaxalign's command line vs TRL's GRPOTrainer (CPU, workload W-GRPO).

This is a benchmark, not a test: it prints timings, asserts nothing about them, and is not collected
by pytest. Install the benchmark-only dependencies (TRL, torch) and run it from the repository root:

  pip install -e ".[bench]"
  python benchmarks/grpo_cli_vs_trl.py                                    # 2 rounds of 20 steps
  python benchmarks/grpo_cli_vs_trl.py --steps=6 --log_every=2 --rounds=1   # quick look (does it run?)
  python benchmarks/grpo_cli_vs_trl.py --jax_args="--config.rollout.cache_buckets=2" --out=/tmp/grpo.json

What runs. The model and tokenizer of `dpo_cli_vs_trl.py` (imported from it): a random-init
`LlamaForCausalLM` (hidden 256, 4 layers, 8 heads × head_dim 32, MLP 688, vocab 1024, untied embeddings,
float32) saved with `save_pretrained(safe_serialization=True)`, and a byte-level BPE tokenizer (vocab 1024;
pad `<pad>`, BOS `<s>` put in front of every `tokenizer(text)` by its post-processor, EOS `</s>`) next to it.
No chat template: jaxalign encodes a plain-string prompt as `tokenizer(prompt)` (`templates.encode_prompt`)
and TRL 1.16 a non-conversational prompt as `processing_class(text=prompts)` (`_tokenize_prompts`); the
TRL subprocess checks that both give the same ids for every prompt and prints how many do. Rows are
`{"prompt": "..."}` (JSONL, `steps × 8` of them: one pass over the prompts, no epoch wrap, both sides
shuffle them, each with its own seed/sampler, so a given step sees different prompts on the two sides).
Prompt lengths: lognormal(3.6, 0.35) tokens (BOS included), clipped to [20, 64], each prompt built
from random lexicon words to exactly that many tokens (so jaxalign's `data.max_prompt_length=64` never
truncates; TRL 1.16 has no prompt truncation at all). The count is printed.

Per step, both sides: 8 prompts × 8 samples (group size 8) = 64 completions, temperature 1 (no top-k,
top-p 1), up to 64 new tokens (EOS ends a completion: with a random model almost none stop, so nearly every
completion is 64 tokens on both sides; the mean length is printed), reward = the benchmark's own Python
function `e_fraction` (share of the characters of the completion text that are the letter "e", with the
special-token strings removed first, because jaxalign hands the reward function the text decoded with
special tokens kept while TRL decodes with `skip_special_tokens=True`), group-standardised advantages
((r - mean) / (std + 1e-4)), the clipped-ratio loss with ε = 0.2, β = 0.04 × k3 KL to a frozen reference
(a forward pass of the reference every step on both sides), per-sequence mean over tokens then mean over
completions (jaxalign `grpo.loss_reduction=sequence`, TRL `loss_type="grpo"`: TRL's default is "dapo"),
exactly one optimiser update per rollout batch of 64 (jaxalign `grpo.num_iterations=1 num_minibatches=1`;
TRL `num_iterations=1`, `per_device_train_batch_size=64` completions, `num_generations=8`,
`gradient_accumulation_steps=1`, hence `steps_per_generation=1`, `generation_batch_size=64` = 8 prompts:
in TRL 1.16 `per_device_train_batch_size` counts completions, not prompts). With one update per rollout
neither side runs a separate "old policy" log-prob pass (TRL: `old_per_token_logps=None`; jaxalign:
`grpo.on_policy`); the ratio is exp(logp - logp.detach()). AdamW lr 1e-6, constant schedule (jaxalign's
GRPO default; TRL `lr_scheduler_type="constant"`), no warmup, weight decay 0, eps 1e-8, grad-norm clip 1,
float32, no evaluation, no HF export, no missing-EOS penalty, no completion masking of truncated rows.

  * jaxalign: `python -m jaxalign.main --config=configs/grpo.py --workdir=<fresh dir> ...` in a subprocess
    (the exact command is printed; PYTHONPATH gets benchmarks/ so that `--config.reward.function=
    grpo_cli_vs_trl:jaxalign_reward` imports), timed by the trainer itself: `perf/step_time_s` of the
    records in `<workdir>/metrics.jsonl` after the first one (the first covers compilation). Each record is
    the mean over `--log_every` steps of everything the loop does per step: the prompt batch, sampling
    (jitted prefill + decode loop), the scoring pass (policy + reference log-probs), tokens to the host,
    decoding and the Python reward, the update, and the metric fetch every `log_every` steps.
  * TRL: `trl.GRPOTrainer` + `GRPOConfig` in a subprocess (this script with `--side=trl`): the policy
    loaded with `AutoModelForCausalLM.from_pretrained(dtype=float32)`; TRL builds the reference itself from
    the same directory (beta > 0). Plain HF `generate` (no vLLM, no continuous batching; TRL passes
    `disable_compile=True`). Step time = wall time from `on_step_begin` to `on_step_end` of a
    `TrainerCallback`. In TRL 1.16 (transformers 5) generation is inside that span: `Trainer.training_step`
    calls `GRPOTrainer._prepare_inputs`, which runs `_generate_and_score_completions` (tokenise prompts,
    `generate`, decode, reward function, reference forward, advantages), then `compute_loss`, backward,
    clipping, AdamW and the scheduler follow before `on_step_end`. Only the dataloader's fetch of the 64
    raw prompt rows (`get_batch_samples`, no tokenisation) is outside the span. Median over the same
    steps as jaxalign's post-warm-up records; the end-to-end interval between consecutive `on_step_end`s
    (that fetch and the callbacks included, closest to what jaxalign's records contain) is reported too.

Differences between the two sides that remain (each is what that side's user gets):
  * Padding: jaxalign left-pads every prompt to `max_prompt_length=64` and always runs 64 decode steps'
    worth of shapes (fixed shapes, one compilation); TRL left-pads prompts to the batch's longest and
    HF `generate` stops when every row has finished (with this random model that is ~never early), and
    its loss/reference passes run on the batch's longest prompt + completion.
  * Sampling: different RNGs (JAX vs torch), so different completions; the mean reward and length are
    printed as a sanity check (the same model and prompt distribution: they should agree closely).
  * Group std: jaxalign the population std of the group, TRL the sample (n-1) std (`nanstd`): advantages
    differ by a factor sqrt(7/8); irrelevant for the time.
  * TRL 1.16 patches the models with a fused LM head (`add_fused_lm_head`, the log-probs of the completion
    positions only, in tiles); jaxalign's scoring and update compute full logits of the completion positions.
  * TRL computes per-token entropies in the loss pass (its `entropy` metric); jaxalign reports
    `policy/entropy` from the update's logits as well.
  * jaxalign cannot run without checkpoints: `train.checkpoint_every=0` saves one Orbax checkpoint after
    the last step, outside every timed record. TRL: `save_strategy="no"`.
  * Logging: TRL `logging_strategy="no"` (its metrics are still collected every step, they are what this
    script reads); jaxalign writes one record every `--log_every` steps (inside its timing).
  * Both sides forced onto the CPU (`JAX_PLATFORMS=cpu`, `use_cpu=True`); thread counts are left at their
    defaults (printed).

Printed per round and in the final table (medians over rounds): ms/step each side, TRL/jaxalign
(= jaxalign's speed-up; the goal is >= 2.0), TRL's end-to-end interval, completions/s, the mean completion
length and mean reward each side, and the 1-minute load average at the start and end of every run
(`os.getloadavg()`; another process on the machine skews the figures). The default run (2 rounds of 20
steps) takes roughly 25 minutes on 2 busy cores, most of it TRL.

Measured once, 2 CPU cores shared with a test-suite run (load 2.2-4.2), `--steps=6 --log_every=2
--rounds=1`: jaxalign 9142 ms/step, TRL 21555 (end-to-end interval 21557), TRL/jaxalign 2.36; 7.0 vs 3.0
completions/s; mean completion length 61.9 vs 62.8 tokens, mean reward 0.0316 vs 0.0319; prompt ids
identical 48/48. Noisy figures (steps 3-6 only).
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
import dpo_cli_vs_trl as dpo  # noqa: E402  (model, tokenizer, lexicon)

PROMPTS, GROUP = 8, 8  # prompts per step, samples per prompt
COMPLETIONS = PROMPTS * GROUP  # 64 completions per step, one optimiser update
MAX_NEW, MAX_PROMPT = 64, 64  # new tokens; prompt tokens (BOS included)
BETA, LR, CLIP = 0.04, 1e-6, 0.2
PROMPT_LOGNORMAL = (3.6, 0.35)  # prompt tokens ~ lognormal(mu, sigma), clipped to [20, MAX_PROMPT]
PROMPT_MIN = 20
SPECIAL = (dpo.PAD, dpo.BOS, dpo.EOS)


# -------------------------------------------------------------------------------------------- reward
def e_fraction(text):
    """Share of the characters of `text` (special-token strings removed) that are the letter "e"."""
    for s in SPECIAL:
        text = text.replace(s, "")
    return text.count("e") / len(text) if text else 0.0


def jaxalign_reward(answer, completion):
    """jaxalign's `reward.function` signature: (answer, completion text with special tokens) -> float."""
    del answer
    return e_fraction(completion)


def trl_reward(completions, **kwargs):
    """TRL's reward-function signature: the decoded completions (special tokens skipped) -> list of floats."""
    del kwargs
    return [e_fraction(c) for c in completions]


# --------------------------------------------------------------------------------------------- rows
def make_prompts(n, tok, words, p, seed):
    import numpy as np

    rng = np.random.default_rng([seed, 3])
    maker = dpo.RowMaker(tok, words, p, rng)
    mu, sigma = PROMPT_LOGNORMAL
    rows = []
    for _ in range(n):
        n_tok = int(np.clip(round(rng.lognormal(mu, sigma)), PROMPT_MIN, MAX_PROMPT))
        rows.append({"prompt": " ".join(maker.exact(n_tok - 1, first=True))})  # + BOS
    return rows


def jaxalign_prompt_ids(data_path, tok):
    """The prompt ids jaxalign's RL trainer samples from (`build_dataset` as `trainers/rl.py` calls it)."""
    sys.path.insert(0, REPO)
    from jaxalign.data import pipeline

    ds = pipeline.build_dataset(
        data_path,
        kind="prompt",
        tokenizer=tok,
        format="auto",
        max_length=MAX_PROMPT + MAX_NEW,
        max_prompt_length=MAX_PROMPT,
    )
    ids, seg = ds.arrays["prompt_ids"], ds.arrays["prompt_segment_ids"]
    return [ids[i][seg[i] > 0].tolist() for i in range(len(ids))], ds.num_truncated


# ------------------------------------------------------------------------------------------ jaxalign
def run_jaxalign(args, model_dir, data_path, workdir):
    cmd = [
        sys.executable,
        "-m",
        "jaxalign.main",
        "--config=configs/grpo.py",
        f"--workdir={workdir}",
        f"--config.model.path={model_dir}",
        f"--config.data.train={data_path}",
        "--config.data.eval=",
        f"--config.data.max_prompt_length={MAX_PROMPT}",
        f"--config.data.max_length={MAX_PROMPT + MAX_NEW}",
        f"--config.train.batch_size={PROMPTS}",
        f"--config.grpo.group_size={GROUP}",
        f"--config.train.num_steps={args.steps}",
        f"--config.train.log_every={args.log_every}",
        "--config.train.checkpoint_every=0",
        "--config.train.keep_checkpoints=1",
        "--config.train.export_hf=False",
        f"--config.optimizer.learning_rate={LR}",
        "--config.optimizer.warmup_steps=0",
        "--config.optimizer.schedule=constant",
        f"--config.rollout.max_new_tokens={MAX_NEW}",
        "--config.rollout.temperature=1.0",
        "--config.rollout.top_k=0",
        "--config.rollout.top_p=1.0",
        "--config.grpo.advantage=grpo",
        "--config.grpo.scale_rewards=True",
        f"--config.grpo.beta={BETA}",
        f"--config.grpo.clip_eps={CLIP}",
        "--config.grpo.num_iterations=1",
        "--config.grpo.num_minibatches=1",
        "--config.grpo.loss_reduction=sequence",
        "--config.reward.model_path=",
        "--config.reward.function=grpo_cli_vs_trl:jaxalign_reward",
        "--config.reward.check_fn=",
        "--config.reward.missing_eos_penalty=0.0",
        "--config.model.dtype=float32",
        "--config.model.param_dtype=float32",
    ]
    cmd += shlex.split(args.jax_args)
    out = cli_runner.run_jaxalign(cmd[1:], workdir, args.jaxalign_root, extra_path=[BENCH])
    recs = out["recs"]
    mean = lambda k: statistics.fmean(r[k] for r in recs) if all(k in r for r in recs) else float("nan")
    out.update(
        reward=mean("train/reward/env"),
        length=mean("train/completion/length"),
        stop_rate=mean("train/completion/stop_rate"),
        kl_sequence=mean("train/kl/sequence"),
    )
    return out


# ----------------------------------------------------------------------------------------------- TRL
def run_trl_side(args):
    """The `--side=trl` subprocess: trains, times each step, writes a JSON result to `--result`."""
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    la0 = cli_runner.loadavg()
    with open(args.data) as f:
        rows = [json.loads(line) for line in f]
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    config = trl.GRPOConfig(
        output_dir=os.path.join(args.workdir, "out"),
        max_steps=args.steps,
        num_train_epochs=1,
        per_device_train_batch_size=COMPLETIONS,
        gradient_accumulation_steps=1,
        num_generations=GROUP,
        num_iterations=1,
        max_completion_length=MAX_NEW,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=BETA,
        epsilon=CLIP,
        loss_type="grpo",
        scale_rewards="group",
        mask_truncated_completions=False,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        optim="adamw_torch",
        use_vllm=False,
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
        log_completions=False,
        seed=args.seed,
    )
    assert config.steps_per_generation == 1 and config.generation_batch_size == COMPLETIONS, (
        config.steps_per_generation,
        config.generation_batch_size,
    )

    collected = {"reward": [], "length": [], "kl": []}

    def after_step(timer):
        m = trainer._metrics["train"]  # collected every step (logging is off: never cleared)
        last = lambda k: m[k][-1] if m.get(k) else float("nan")
        for name, key in (("reward", "reward"), ("length", "completions/mean_length"), ("kl", "kl")):
            collected[name].append(last(key))

    timer = cli_runner.StepTimer.make(after_step)
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[trl_reward],
        args=config,
        processing_class=tok,
        train_dataset=Dataset.from_list(rows),
        callbacks=[timer],
    )

    # Does TRL sample from the prompt ids jaxalign samples from? (TRL's own tokenisation of the rows.)
    same, n_check, first_diff = 0, 0, None
    if args.expect:
        with open(args.expect) as f:
            expect = json.load(f)
        got = trainer._tokenize_prompts([r["prompt"] for r in rows])[0]
        n_check = min(len(got), len(expect))
        for i in range(n_check):
            if list(got[i]) == expect[i]:
                same += 1
            elif first_diff is None:
                first_diff = {"row": i, "trl_len": len(got[i]), "jaxalign_len": len(expect[i])}

    t0 = time.time()
    trainer.train()
    wall = time.time() - t0
    nanmean = lambda xs: (
        statistics.fmean(x for x in xs if x == x) if any(x == x for x in xs) else float("nan")
    )
    result = {
        **timer.summary(args.log_every),  # the same steps as jaxalign's post-warm-up records
        "wall_s": wall,
        "load_start": la0,
        "load_end": cli_runner.loadavg(),
        "reward": nanmean(collected["reward"]),
        "length": nanmean(collected["length"]),
        "kl_token": nanmean(collected["kl"]),
        "torch_threads": torch.get_num_threads(),
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "identical_prompts": same,
        "checked_prompts": n_check,
        "first_diff": first_diff,
    }
    with open(args.result, "w") as f:
        json.dump(result, f)


def run_trl(args, model_dir, data_path, expect_path, workdir):
    return cli_runner.run_trl(
        os.path.abspath(__file__),
        [
            f"--model_dir={model_dir}",
            f"--data={data_path}",
            f"--expect={expect_path}",
            f"--steps={args.steps}",
            f"--log_every={args.log_every}",
            f"--seed={args.seed}",
        ],
        workdir,
        REPO,
    )


# ---------------------------------------------------------------------------------------------- main
def parse_args():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--steps", type=int, default=20, help="training steps (rollout batches) per run, both sides"
    )
    ap.add_argument(
        "--log_every",
        type=int,
        default=5,
        help="jaxalign's train.log_every; the first record (and TRL's first log_every steps) "
        "is warm-up and left out",
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jax_args", default="", help="extra jaxalign flags, appended verbatim")
    ap.add_argument(
        "--jaxalign_root",
        default=REPO,
        help="the jaxalign checkout whose CLI runs (its configs/ and jaxalign/)",
    )
    ap.add_argument("--workdir", default="", help="where the model, data and runs go (default: a temp dir)")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    # The TRL subprocess (internal).
    ap.add_argument("--side", default="", choices=["", "trl"], help=argparse.SUPPRESS)
    for name in ("model_dir", "data", "expect", "result"):
        ap.add_argument(f"--{name}", default="", help=argparse.SUPPRESS)
    return ap.parse_args()


def main():
    args = parse_args()
    if args.side == "trl":
        run_trl_side(args)
        return
    if args.steps < 2 * args.log_every:
        sys.exit(
            f"--steps={args.steps} must be >= 2 * --log_every={args.log_every} (the first record is warm-up)"
        )
    root = args.workdir or tempfile.mkdtemp(prefix="grpo_cli_vs_trl_")
    os.makedirs(root, exist_ok=True)
    model_dir = os.path.join(root, "model")
    import numpy as np
    import torch

    tok, words, p = dpo.make_model_and_tokenizer(model_dir, args.seed)
    print(f"workdir {root}; model + tokenizer in {model_dir}")
    print(
        f"Llama d={dpo.HIDDEN} L={dpo.LAYERS} heads={dpo.HEADS}x{dpo.HEAD_DIM} mlp={dpo.INTERMEDIATE} "
        f"vocab={dpo.VOCAB}, float32; {PROMPTS} prompts x {GROUP} samples = {COMPLETIONS} completions/step, "
        f"<= {MAX_NEW} new tokens, beta {BETA}, lr {LR}; {args.steps} steps, timed steps "
        f"{args.log_every + 1}-{args.steps}; cpus={os.cpu_count()} torch threads={torch.get_num_threads()}; "
        f"jax_args={args.jax_args!r}"
    )

    rows = make_prompts(args.steps * PROMPTS, tok, words, p, args.seed)
    data_path = os.path.join(root, "prompts.jsonl")
    with open(data_path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    ids, truncated = jaxalign_prompt_ids(data_path, tok)
    expect = os.path.join(root, "jaxalign_prompt_ids.json")
    with open(expect, "w") as f:
        json.dump(ids, f)
    lens = np.array([len(x) for x in ids])
    stats = {
        "rows": len(rows),
        "mean_tokens": float(lens.mean()),
        "min_tokens": int(lens.min()),
        "max_tokens": int(lens.max()),
        "truncated": int(truncated),
    }
    print(
        f"{len(rows)} prompts: tokens (BOS included) mean {stats['mean_tokens']:.1f}, min {stats['min_tokens']}, "
        f"max {stats['max_tokens']}; {truncated} truncated by jaxalign (max_prompt_length={MAX_PROMPT})",
        flush=True,
    )

    runs = []
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}/{args.rounds}: jaxalign", flush=True)
        jx = run_jaxalign(args, model_dir, data_path, os.path.join(root, f"r{rnd}_jaxalign"))
        print(f"  {jx['describe']}", flush=True)
        print(
            f"  jaxalign: {1e3 * jx['step_s']:.1f} ms/step (records {[(s, round(1e3 * t, 1)) for s, t in jx['records']]}"
            f" ms; first = compile), wall {jx['wall_s']:.0f}s, load {jx['load_start']:.2f} -> "
            f"{jx['load_end']:.2f}",
            flush=True,
        )
        print(f"round {rnd + 1}/{args.rounds}: TRL", flush=True)
        tr = run_trl(args, model_dir, data_path, expect, os.path.join(root, f"r{rnd}_trl"))
        print(
            f"  TRL {tr['trl']}: {1e3 * tr['step_s']:.1f} ms/step median of steps {tr['timed_steps']} "
            f"(mean {1e3 * tr['mean_step_s']:.1f}, end-to-end interval {1e3 * tr['interval_s']:.1f}; first "
            f"steps {[round(1e3 * t) for t in tr['first_steps_s']]} ms), torch threads {tr['torch_threads']}, "
            f"wall {tr['process_wall_s']:.0f}s, load {tr['load_start']:.2f} -> {tr['load_end']:.2f}",
            flush=True,
        )
        print(
            f"  prompt ids identical on both sides: {tr['identical_prompts']}/{tr['checked_prompts']}"
            + (f"; first difference {tr['first_diff']}" if tr["first_diff"] else "")
            + f"; mean completion length jaxalign {jx['length']:.1f}, TRL {tr['length']:.1f} tokens; "
            f"mean reward jaxalign {jx['reward']:.4f}, TRL {tr['reward']:.4f}",
            flush=True,
        )
        print(f"  round {rnd + 1}: TRL/jaxalign = {tr['step_s'] / jx['step_s']:.2f}", flush=True)
        runs.append({"jaxalign": jx, "trl": tr})

    med = lambda side, k: statistics.median(r[side][k] for r in runs)
    jx, tr, e2e = med("jaxalign", "step_s"), med("trl", "step_s"), med("trl", "interval_s")
    t = {
        "jaxalign_ms": 1e3 * jx,
        "trl_ms": 1e3 * tr,
        "ratio": tr / jx,
        "trl_interval_ms": 1e3 * e2e,
        "ratio_interval": e2e / jx,
        "jaxalign_completions_s": COMPLETIONS / jx,
        "trl_completions_s": COMPLETIONS / tr,
        "jaxalign_length": med("jaxalign", "length"),
        "trl_length": med("trl", "length"),
        "jaxalign_reward": med("jaxalign", "reward"),
        "trl_reward": med("trl", "reward"),
    }
    loads = " ; ".join(
        f"{r['jaxalign']['load_start']:.2f}->{r['jaxalign']['load_end']:.2f} | "
        f"{r['trl']['load_start']:.2f}->{r['trl']['load_end']:.2f}"
        for r in runs
    )
    print(
        f"\nGRPO step (W-GRPO), {PROMPTS} prompts x {GROUP} = {COMPLETIONS} completions, <= {MAX_NEW} new "
        f"tokens, CPU ({os.cpu_count()} cores), median over {args.rounds} round(s), steps "
        f"{args.log_every + 1}-{args.steps}:"
    )
    print(
        f"{'jaxalign ms':>11} {'TRL ms':>8} {'TRL/jax':>7} {'TRL e2e ms':>10} {'e2e/jax':>7} {'jax compl/s':>11} "
        f"{'TRL compl/s':>11} {'jax len':>7} {'TRL len':>7} {'jax reward':>10} {'TRL reward':>10}  "
        f"load avg (start->end) jaxalign | TRL"
    )
    print(
        f"{t['jaxalign_ms']:11.1f} {t['trl_ms']:8.1f} {t['ratio']:7.2f} {t['trl_interval_ms']:10.1f} "
        f"{t['ratio_interval']:7.2f} {t['jaxalign_completions_s']:11.2f} {t['trl_completions_s']:11.2f} "
        f"{t['jaxalign_length']:7.1f} {t['trl_length']:7.1f} {t['jaxalign_reward']:10.4f} {t['trl_reward']:10.4f}  "
        f"{loads}"
    )
    print(
        "TRL/jaxalign = jaxalign's speed-up (goal >= 2.0); e2e = TRL's step_end-to-step_end interval (the "
        "dataloader's prompt fetch and callbacks included); len = mean completion tokens (EOS included); "
        "reward = mean e_fraction (sanity: the same model and prompts, so about equal)."
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "data": stats, "runs": runs, "table": t}, f, indent=1)
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
