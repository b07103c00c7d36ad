"""A GRPO training step as a user gets it: jaxalign's command line vs TRL's GRPOTrainer (CPU, W-GRPO[-var]).

This is a benchmark, not a test: it prints timings, asserts nothing about them, and is not collected
by pytest. Install the benchmark-only dependencies (TRL, torch) and run it from the repository root:

  pip install -e ".[bench]"
  python benchmarks/grpo_cli_vs_trl.py                                    # 2 rounds of 20 steps
  python benchmarks/grpo_cli_vs_trl.py --steps=6 --log_every=2 --rounds=1   # quick look (does it run?)
  python benchmarks/grpo_cli_vs_trl.py --workload=var --jax_split          # W-GRPO-var, both sides' split
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

Workloads (`--workload`):
  * fixed (W-GRPO, the default): the model as saved, EOS `</s>` the only stop id, <= 64 new tokens.
  * var (W-GRPO-var): the same weights and tokenizer copied to `<workdir>/model_var`, whose `config.json`
    and `generation_config.json` hold `eos_token_id` as a list: the tokenizer's EOS id plus the 25 ids of
    the single-letter tokens a-z except "e" (`STOP_LETTERS`; "e" is left out because it is what the
    reward counts). <= 128 new tokens (jaxalign `rollout.max_new_tokens=128`, `data.max_length=64+128`;
    TRL `max_completion_length=128`). Both sides read the list from the checkpoint: jaxalign's RL trainer
    stops at `sampling.eos_ids_of(tokenizer, model_config.eos_token_id)` (`trainers/rl.py:_extra_eos`,
    the model config read from config.json), TRL 1.16 at `model.generation_config.eos_token_id`
    (`GRPOTrainer.eos_token_ids`: passed to `generate` as `eos_token_id=[...]`, which stops a row at any
    of them, and used to mask everything after the first one). Both are checked and printed at start-up
    and in the TRL subprocess. The random model's next-token distribution is close to uniform over the
    1024 ids, so each token is a stop id with p ~ 26/1024 and lengths are ~ geometric, mean ~ 38 of
    <= 128 (the mean length and the stop rate of each side are printed). The fixed workload's directory
    is not modified.

Per step, both sides: 8 prompts × 8 samples (group size 8) = 64 completions, temperature 1 (no top-k,
top-p 1), up to 64 new tokens (EOS ends a completion: with a random model almost none stop, so nearly every
completion is 64 tokens on both sides; the mean length is printed; W-GRPO-var: up to 128, see above), reward = the benchmark's own Python
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
(= jaxalign's speed-up; the goals are >= 2.0 on W-GRPO and >= 2.5 on W-GRPO-var), TRL's end-to-end
interval, completions/s, the mean completion length (stop token included), the stop rate (share of
completions ended by a stop id: jaxalign `completion/stop_rate`, TRL 1 - `completions/clipped_ratio`) and
the mean reward each side, and the 1-minute load average at the start and end of every run
(`os.getloadavg()`; another process on the machine skews the figures).

The sample / score / update split, both sides (medians over the timed steps):
  * TRL: measured in the timed run itself. The trainer instance's `_generate_and_score_completions` and
    its model's `generate` are wrapped with timers (instance attributes): sample = `generate`; score =
    the rest of `_generate_and_score_completions` (prompt tokenisation, decoding, the reward function,
    the reference forward, advantages); update = the rest of the on_step_begin..on_step_end span (loss
    forward, backward, clipping, AdamW). The wrappers add two `perf_counter` calls per step.
  * jaxalign: its `metrics.jsonl` records hold no per-phase timings (only `perf/step_time_s`,
    `perf/tokens_per_s`, `perf/tflops_per_s`, `perf/mfu`; the keys are printed, and a future `perf/*sample*`,
    `*score*`, `*update*` trio would be used). With `--jax_split` each round also runs
    `benchmarks/rl_step_split.py` with the CLI run's `--config` flags, `--warmup=<log_every>` and
    `--steps=<steps - log_every>` (a separate process, the same rollouts; it blocks on the device after each
    phase, so the phases add up to about the step time): sample = the jitted sampler, score =
    score/device (policy and reference log-probs) + score/host (decode, Python reward), update =
    advantages + the optimiser step. Without it the jaxalign split is printed as n/a. The default run (2 rounds of 20
steps) takes roughly 25 minutes on 2 busy cores, most of it TRL.

Measured once, 2 CPU cores shared with a test-suite run (load 2.2-4.2), `--steps=6 --log_every=2
--rounds=1`: jaxalign 9142 ms/step, TRL 21555 (end-to-end interval 21557), TRL/jaxalign 2.36; 7.0 vs 3.0
completions/s; mean completion length 61.9 vs 62.8 tokens, mean reward 0.0316 vs 0.0319; prompt ids
identical 48/48. Noisy figures (steps 3-6 only).

W-GRPO-var smoke run, the same 2 cores shared with another engineer's runs (load 2.1-3.7), `--workload=var
--steps=4 --log_every=2 --rounds=1 --jax_split`: jaxalign 6730 ms/step, TRL 43860 (6.52; TRL's figure is
inflated by the contention: its `generate` took 31.1 s of it); mean completion length 36.5 vs 37.0 tokens,
stop rate 98.8% vs 95.7%, mean reward 0.0324 vs 0.0307; split jaxalign (rl_step_split.py) sample 1557 /
score 1802 / update 7976 ms, TRL 31131 / 2645 / 10084 ms. One timed step each: not a measurement.
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
MAX_NEW, MAX_PROMPT = 64, 64  # new tokens (W-GRPO); prompt tokens (BOS included)
MAX_NEW_VAR = 128  # new tokens at most (W-GRPO-var)
# W-GRPO-var's 25 extra stop ids: the single-letter tokens of these letters (every lowercase letter but
# "e", so that the reward's letter never ends a completion). With a near-uniform random model each of
# the 26 stop ids (EOS included) is sampled with p ~ 1/1024 per token: lengths ~ geometric(~2.5%),
# mean ~ 1/0.025 * (1 - 0.975^128) ~ 38 of <= 128.
STOP_LETTERS = "abcdfghijklmnopqrstuvwxyz"
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


def max_new_tokens(workload):
    return MAX_NEW if workload == "fixed" else MAX_NEW_VAR


# ------------------------------------------------------------------------------- W-GRPO-var's model
def make_var_model(model_dir, var_dir, tok):
    """Copies `model_dir` to `var_dir` and writes `eos_token_id` = [EOS, 25 stop ids] into its
    config.json and generation_config.json (the fixed workload's directory is left as it is).
    Returns the list."""
    import shutil

    extra = []
    for c in STOP_LETTERS:
        i = tok.convert_tokens_to_ids(c)
        assert tok(c, add_special_tokens=False)["input_ids"] == [i], (c, i)
        extra.append(int(i))
    stop = [int(tok.eos_token_id)] + extra
    assert len(set(stop)) == 26 and not {tok.pad_token_id, tok.bos_token_id} & set(stop), stop
    shutil.copytree(model_dir, var_dir, dirs_exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        path = os.path.join(var_dir, name)
        cfg = {}
        if os.path.exists(path):
            with open(path) as f:
                cfg = json.load(f)
        if name == "generation_config.json":  # save_pretrained may not write one: keep the ids it would
            cfg.setdefault("bos_token_id", tok.bos_token_id)
            cfg.setdefault("pad_token_id", tok.pad_token_id)
        cfg["eos_token_id"] = stop
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
    return stop


def jaxalign_stop_ids(model_dir, tok):
    """The stop ids jaxalign's RL trainer derives from the directory (`trainers/rl.py`:
    `sampling.eos_ids_of(tok, _extra_eos(model config))`, the config read from config.json)."""
    sys.path.insert(0, REPO)
    from jaxalign import sampling
    from jaxalign.models.config import ModelConfig
    from jaxalign.trainers.rl import _extra_eos

    with open(os.path.join(model_dir, "config.json")) as f:
        mcfg = ModelConfig.from_hf(json.load(f))
    return list(sampling.eos_ids_of(tok, _extra_eos(mcfg)))


def jaxalign_prompt_ids(data_path, tok, max_new):
    """The prompt ids jaxalign's RL trainer samples from (`build_dataset` as `trainers/rl.py` calls it)."""
    sys.path.insert(0, REPO)
    from jaxalign.data import pipeline

    ds = pipeline.build_dataset(
        data_path,
        kind="prompt",
        tokenizer=tok,
        format="auto",
        max_length=MAX_PROMPT + max_new,
        max_prompt_length=MAX_PROMPT,
    )
    ids, seg = ds.arrays["prompt_ids"], ds.arrays["prompt_segment_ids"]
    return [ids[i][seg[i] > 0].tolist() for i in range(len(ids))], ds.num_truncated


# ------------------------------------------------------------------------------------------ jaxalign
def jaxalign_config_flags(args, model_dir, data_path):
    """The `--config...` flags of the jaxalign run (shared by the CLI run and `--jax_split`)."""
    max_new = max_new_tokens(args.workload)
    return [
        "--config=configs/grpo.py",
        f"--config.model.path={model_dir}",
        f"--config.data.train={data_path}",
        "--config.data.eval=",
        f"--config.data.max_prompt_length={MAX_PROMPT}",
        f"--config.data.max_length={MAX_PROMPT + max_new}",
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
        f"--config.rollout.max_new_tokens={max_new}",
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
    ] + shlex.split(args.jax_args)


def run_jaxalign(args, model_dir, data_path, workdir):
    cmd = ["-m", "jaxalign.main", f"--workdir={workdir}"] + jaxalign_config_flags(args, model_dir, data_path)
    out = cli_runner.run_jaxalign(cmd, workdir, args.jaxalign_root, extra_path=[BENCH])
    recs = out["recs"]
    mean = lambda k: statistics.fmean(r[k] for r in recs) if all(k in r for r in recs) else float("nan")
    out.update(
        reward=mean("train/reward/env"),
        length=mean("train/completion/length"),
        stop_rate=mean("train/completion/stop_rate"),
        kl_sequence=mean("train/kl/sequence"),
    )
    # Per-phase timings, if the trainer logs any (today it logs only perf/step_time_s, tokens_per_s,
    # tflops_per_s, mfu: then the split is None and `--jax_split` measures it separately).
    perf = sorted({k for r in recs for k in r if k.startswith("perf/")})
    out["perf_keys"] = perf
    split = {}
    for phase in ("sample", "score", "update"):
        keys = [k for k in perf if phase in k.split("/", 1)[1]]
        if keys and all(keys[0] in r for r in recs[1:]):
            split[phase] = statistics.median(r[keys[0]] for r in recs[1:])
    out["split"] = split if len(split) == 3 else None
    return out


def run_jaxalign_split(args, model_dir, data_path, workdir):
    """`benchmarks/rl_step_split.py` with the CLI run's config flags: the same rollouts, phases timed one
    by one (blocking after each), the first `--log_every` steps untimed. Returns {phase: seconds} with
    sample, score (= score/device + score/host) and update, and the script's output lines."""
    import re

    flags = [f for f in jaxalign_config_flags(args, model_dir, data_path) if f.startswith("--config")]
    cmd = [
        os.path.join(BENCH, "rl_step_split.py"),
        f"--warmup={args.log_every}",
        f"--steps={args.steps - args.log_every}",
    ] + flags
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(
        [args.jaxalign_root, BENCH] + [x for x in [env.get("PYTHONPATH")] if x]
    )
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    print("  $ python " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    info = cli_runner._call(
        [sys.executable] + cmd, args.jaxalign_root, env, workdir + ".log", "rl_step_split"
    )
    with open(info["log"]) as f:
        text = f.read()
    ms = {
        m[1]: float(m[2])
        for m in re.finditer(r"^\s+(sample|score/device|score/host|update)\s+([\d.]+) ms", text, re.MULTILINE)
    }
    if len(ms) != 4:
        raise RuntimeError(f"rl_step_split printed no phase times; log {info['log']}")
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^\s+(sample|score/\w+|update|step)\s", ln)]
    return {
        "sample": ms["sample"] / 1e3,
        "score": (ms["score/device"] + ms["score/host"]) / 1e3,
        "update": ms["update"] / 1e3,
        "lines": lines,
        **info,
    }


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
        max_completion_length=max_new_tokens(args.workload),
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

    collected = {"reward": [], "length": [], "kl": [], "clipped": []}
    # The step's phases: `generate` (sample), the rest of `_generate_and_score_completions` (score:
    # tokenisation, decoding, the reward function, the reference forward, advantages) and the rest of
    # the step (update: loss forward, backward, clipping, AdamW). Accumulated per step by the wrappers
    # below, moved to `phases` by the step-end callback.
    acc = {"generate": 0.0, "gen_score": 0.0, "generate_calls": 0}
    phases = {"sample": [], "score": [], "update": [], "generate_calls": []}

    def after_step(timer):
        m = trainer._metrics["train"]  # collected every step (logging is off: never cleared)
        last = lambda k: m[k][-1] if m.get(k) else float("nan")
        keys = (
            ("reward", "reward"),
            ("length", "completions/mean_length"),
            ("kl", "kl"),
            ("clipped", "completions/clipped_ratio"),
        )
        for name, key in keys:
            collected[name].append(last(key))
        phases["sample"].append(acc["generate"])
        phases["score"].append(acc["gen_score"] - acc["generate"])
        phases["update"].append(timer.step[-1] - acc["gen_score"])
        phases["generate_calls"].append(acc["generate_calls"])
        acc.update(generate=0.0, gen_score=0.0, generate_calls=0)

    timer = cli_runner.StepTimer.make(after_step)
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[trl_reward],
        args=config,
        processing_class=tok,
        train_dataset=Dataset.from_list(rows),
        callbacks=[timer],
    )

    def timed(fn, key, count=None):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[key] += time.perf_counter() - t0
                if count:
                    acc[count] += 1

        return wrapper

    # Instance attributes shadow the bound methods (TRL calls `self._generate_and_score_completions`
    # and, on one CPU process, `unwrap_model_for_generation` yields this same module for `.generate`).
    trainer._generate_and_score_completions = timed(trainer._generate_and_score_completions, "gen_score")
    trainer.model.generate = timed(trainer.model.generate, "generate", "generate_calls")

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
        "stop_rate": 1.0 - nanmean(collected["clipped"]),
        "split": {k: statistics.median(phases[k][args.log_every :]) for k in ("sample", "score", "update")}
        if all(n == 1 for n in phases["generate_calls"])
        else None,  # `generate` not seen once per step: the wrapper missed it
        "generate_calls": phases["generate_calls"],
        "eos_token_ids": [int(i) for i in trainer.eos_token_ids],
        "generation_config_eos": trainer.generation_config.eos_token_id,
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
            f"--workload={args.workload}",
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
    ap.add_argument(
        "--workload",
        default="fixed",
        choices=["fixed", "var"],
        help="fixed = W-GRPO (<= 64 new tokens, the tokenizer's EOS only); var = W-GRPO-var (<= 128 new "
        "tokens, 25 extra stop ids in the checkpoint's eos_token_id list)",
    )
    ap.add_argument(
        "--jax_split",
        action="store_true",
        help="also run benchmarks/rl_step_split.py with the same config per round: jaxalign's "
        "sample / score / update split (its metrics.jsonl has no per-phase timings)",
    )
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


def ms_split(split):
    if not split:
        return "n/a"
    total = sum(split.values())
    return ", ".join(f"{k} {1e3 * v:.0f} ms ({100 * v / total:.0f}%)" for k, v in split.items())


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

    max_new = max_new_tokens(args.workload)
    name = "W-GRPO" if args.workload == "fixed" else "W-GRPO-var"
    tok, words, p = dpo.make_model_and_tokenizer(model_dir, args.seed)
    print(f"workdir {root}; model + tokenizer in {model_dir}")
    stop_ids = [int(tok.eos_token_id)]
    if args.workload == "var":
        var_dir = os.path.join(root, "model_var")
        stop_ids = make_var_model(model_dir, var_dir, tok)
        model_dir = var_dir
        jx_ids = jaxalign_stop_ids(model_dir, tok)
        from transformers import GenerationConfig

        hf_ids = GenerationConfig.from_pretrained(model_dir).eos_token_id
        print(
            f"{name}: model with eos_token_id = {stop_ids} (EOS {tok.eos_token_id} + the tokens "
            f"{list(STOP_LETTERS)}) in {model_dir}/config.json and generation_config.json; jaxalign's RL "
            f"trainer reads {len(jx_ids)} stop ids from it ({'the same' if sorted(jx_ids) == sorted(stop_ids) else jx_ids}), "
            f"transformers' GenerationConfig {len(hf_ids)} ({'the same' if sorted(hf_ids) == sorted(stop_ids) else hf_ids})"
        )
    print(
        f"{name}: Llama d={dpo.HIDDEN} L={dpo.LAYERS} heads={dpo.HEADS}x{dpo.HEAD_DIM} mlp={dpo.INTERMEDIATE} "
        f"vocab={dpo.VOCAB}, float32; {PROMPTS} prompts x {GROUP} samples = {COMPLETIONS} completions/step, "
        f"<= {max_new} new tokens, {len(stop_ids)} stop id(s), beta {BETA}, lr {LR}; {args.steps} steps, "
        f"timed steps {args.log_every + 1}-{args.steps}; cpus={os.cpu_count()} "
        f"torch threads={torch.get_num_threads()}; jax_args={args.jax_args!r}"
    )

    rows = make_prompts(args.steps * PROMPTS, tok, words, p, args.seed)
    data_path = os.path.join(root, "prompts.jsonl")
    with open(data_path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    ids, truncated = jaxalign_prompt_ids(data_path, tok, max_new)
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
        print(
            f"  jaxalign: mean completion length {jx['length']:.1f} tokens, stop rate {jx['stop_rate']:.1%}",
            flush=True,
        )
        if jx["split"] is None:
            print(
                f"  jaxalign split: none in metrics.jsonl (its perf/ keys: {', '.join(jx['perf_keys'])}; no "
                "per-phase timings)"
                + ("" if args.jax_split else "; --jax_split measures it with benchmarks/rl_step_split.py"),
                flush=True,
            )
        else:
            print(f"  jaxalign split (metrics.jsonl): {ms_split(jx['split'])}", flush=True)
        if args.jax_split:
            sp = run_jaxalign_split(args, model_dir, data_path, os.path.join(root, f"r{rnd}_jaxalign_split"))
            for line in sp["lines"]:
                print(f"    {line}", flush=True)
            jx["split_run"] = {
                k: sp[k] for k in ("sample", "score", "update", "wall_s", "load_start", "load_end")
            }
            if jx["split"] is None:
                jx["split"] = {k: sp[k] for k in ("sample", "score", "update")}
            print(
                f"  jaxalign split (rl_step_split.py, phases blocked one by one, steps {args.log_every + 1}-"
                f"{args.steps}): {ms_split(jx['split'])}; wall {sp['wall_s']:.0f}s, load {sp['load_start']:.2f} "
                f"-> {sp['load_end']:.2f}",
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
            f"  TRL: mean completion length {tr['length']:.1f} tokens, stop rate {tr['stop_rate']:.1%}; stop ids "
            f"{len(tr['eos_token_ids'])} ({'the same' if sorted(tr['eos_token_ids']) == sorted(stop_ids) else tr['eos_token_ids']}); "
            f"split (generate | rest of _generate_and_score_completions | rest of the step): "
            f"{ms_split(tr['split'])}",
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
        "jaxalign_stop_rate": med("jaxalign", "stop_rate"),
        "trl_stop_rate": med("trl", "stop_rate"),
        "jaxalign_reward": med("jaxalign", "reward"),
        "trl_reward": med("trl", "reward"),
    }
    for side in ("jaxalign", "trl"):
        splits = [r[side]["split"] for r in runs if r[side]["split"]]
        t[f"{side}_split_ms"] = (
            {k: 1e3 * statistics.median(sp[k] for sp in splits) for k in ("sample", "score", "update")}
            if splits
            else None
        )
    loads = " ; ".join(
        f"{r['jaxalign']['load_start']:.2f}->{r['jaxalign']['load_end']:.2f} | "
        f"{r['trl']['load_start']:.2f}->{r['trl']['load_end']:.2f}"
        for r in runs
    )
    print(
        f"\nGRPO step ({name}), {PROMPTS} prompts x {GROUP} = {COMPLETIONS} completions, <= {max_new} new "
        f"tokens, {len(stop_ids)} stop id(s), CPU ({os.cpu_count()} cores), median over {args.rounds} round(s), "
        f"steps {args.log_every + 1}-{args.steps}:"
    )
    print(
        f"{'jaxalign ms':>11} {'TRL ms':>8} {'TRL/jax':>7} {'TRL e2e ms':>10} {'e2e/jax':>7} {'jax compl/s':>11} "
        f"{'TRL compl/s':>11} {'jax len':>7} {'TRL len':>7} {'jax stop':>8} {'TRL stop':>8} {'jax reward':>10} "
        f"{'TRL reward':>10}  load avg (start->end) jaxalign | TRL"
    )
    print(
        f"{t['jaxalign_ms']:11.1f} {t['trl_ms']:8.1f} {t['ratio']:7.2f} {t['trl_interval_ms']:10.1f} "
        f"{t['ratio_interval']:7.2f} {t['jaxalign_completions_s']:11.2f} {t['trl_completions_s']:11.2f} "
        f"{t['jaxalign_length']:7.1f} {t['trl_length']:7.1f} {t['jaxalign_stop_rate']:8.1%} "
        f"{t['trl_stop_rate']:8.1%} {t['jaxalign_reward']:10.4f} {t['trl_reward']:10.4f}  {loads}"
    )
    for side, label in (("jaxalign", "jaxalign"), ("trl", "TRL")):
        sp = t[f"{side}_split_ms"]
        print(
            f"{label:>8} split (ms/step, median over rounds): "
            + (
                "  ".join(f"{k} {v:.0f} ({100 * v / sum(sp.values()):.0f}%)" for k, v in sp.items())
                if sp
                else "n/a (jaxalign's metrics.jsonl has no per-phase timings; --jax_split measures them)"
                if side == "jaxalign"
                else "n/a (generate was not seen once per step)"
            )
        )
    print(
        "TRL/jaxalign = jaxalign's speed-up (goal >= 2.0 on W-GRPO, >= 2.5 on W-GRPO-var); e2e = TRL's "
        "step_end-to-step_end interval (the dataloader's prompt fetch and callbacks included); len = mean "
        "completion tokens (the stop token included); stop = share of completions ended by a stop id "
        "(jaxalign completion/stop_rate, TRL 1 - completions/clipped_ratio); reward = mean e_fraction (sanity: "
        "the same model and prompts, so about equal). Split: jaxalign sample = the jitted sampler, score = "
        "policy/reference log-probs + host decode and reward, update = advantages + the optimiser step "
        "(rl_step_split.py, a separate run); TRL sample = `generate`, score = the rest of "
        "_generate_and_score_completions, update = the rest of on_step_begin..on_step_end."
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"args": vars(args), "data": stats, "stop_ids": stop_ids, "runs": runs, "table": t},
                f,
                indent=1,
            )
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
