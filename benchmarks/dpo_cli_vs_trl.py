"""A DPO training step as a user gets it: jaxalign's command line vs TRL's DPOTrainer (CPU).

This is a benchmark, not a test: it prints timings, asserts nothing about them, and is not collected
by pytest. Install the benchmark-only dependencies (TRL, torch) and run it from the repository root:

  pip install -e ".[bench]"
  python benchmarks/dpo_cli_vs_trl.py                                   # both workloads, 2 rounds, 40 steps
  python benchmarks/dpo_cli_vs_trl.py --workload=uniform --steps=12 --log_every=4 --rounds=1   # quick look
  python benchmarks/dpo_cli_vs_trl.py --jax_args="--config.data.packing=False" --out=/tmp/dpo.json

What runs. One random-init `LlamaForCausalLM` (hidden 256, 4 layers, 8 heads × head_dim 32, MLP 688,
vocab 1024, untied embeddings, float32) saved by transformers with `save_pretrained(safe_serialization=True)`,
and a byte-level BPE tokenizer (vocab 1024, trained with `tokenizers` on random words; pad `<pad>`, BOS
`<s>` added in front of every `tokenizer(text)` by its post-processor, EOS `</s>`) saved next to it. No
chat template: jaxalign does not need one for plain-string prompt/chosen/rejected rows
(`jaxalign/data/templates.py:encode_prompt_completion`), and TRL treats such rows as its "standard"
preference format. Both sides load that one directory and read the same rows (JSONL, `steps × 8` of
them: one pass, no epoch wrap):

  * jaxalign: `python -m jaxalign.main --config=configs/dpo.py --workdir=<fresh dir> ...` in a subprocess
    (the exact command is printed), timed by the trainer itself: `perf/step_time_s` of the records in
    `<workdir>/metrics.jsonl` after the first one (the first covers compilation). Each record is the mean
    over `--log_every` steps and includes everything the loop does per step (batch from the iterator,
    host -> device, the jitted step, the metric fetch every `log_every` steps).
  * TRL: `trl.DPOTrainer` + `DPOConfig` in a subprocess (this script with `--side=trl`): policy and
    reference loaded from the directory with `AutoModelForCausalLM.from_pretrained(dtype=float32)` and
    passed as `model=` / `ref_model=`; step time = wall time from `on_step_begin` to `on_step_end` of a
    `TrainerCallback` (forward/backward of policy, reference forward, clipping, AdamW, scheduler; the
    dataloader's collation happens before `on_step_begin` and is not in it), median over the same steps
    as jaxalign's post-warm-up records (11-40 by default). The end-to-end interval between consecutive
    `on_step_end`s (collation and logging included, closer to what jaxalign's records contain) is
    reported too. Note that TRL 1.16 patches the models with a fused LM head (`add_fused_lm_head`): it
    projects onto the vocabulary only the positions whose label is a completion token, in tiles.

Same hyper-parameters on both sides: 8 pairs per step, no gradient accumulation, beta 0.1, sigmoid loss
(no RPO/SFT term: `dpo.rpo_alpha=0`; TRL 1.16 has no `rpo_alpha` field, `loss_type=["sigmoid"]` alone is plain
DPO), AdamW lr 1e-5, weight decay 0, eps 1e-8, grad-norm clip 1.0, no warmup, linear decay to 0, float32,
no evaluation, no HF export. The reference: TRL runs its frozen copy every step (its default,
`precompute_ref_log_probs=False`); jaxalign runs with its default, `dpo.precompute_ref=True`: one
reference pass over the rows before step 1 (outside the timed steps, inside the printed wall time),
cached on disk so that the next round's run reads it instead. `--jax_args=--config.dpo.precompute_ref=False`
makes jaxalign run a frozen copy every step as TRL does (the same work per step).
TRL's defaults that would change the computation are switched off to match jaxalign: `bf16=False`
(TRL's default is bf16 autocast) and `gradient_checkpointing=False` (TRL's default is on; jaxalign's
`model.remat` is off). jaxalign cannot run without checkpoints at all: `train.checkpoint_every=0` saves
one Orbax checkpoint after the last step, outside every timed record. Both sides are forced onto the CPU
(`JAX_PLATFORMS=cpu`, `use_cpu=True`); thread counts are left at their defaults (printed).

Workloads (`--workload=uniform|var|both`):
  * uniform (W-DPO): every prompt exactly 64 tokens (BOS + 63) and every completion exactly 64 tokens
    (63 + EOS): every sequence is exactly 128 tokens; `max_length=128`, jaxalign `max_prompt_length=64`.
  * var (W-DPO-var): chat-like lengths, prompt words ~ lognormal(3.0, 0.7) clipped to [3, 150], each
    completion's words ~ lognormal(3.6, 0.8) clipped to [2, 200]; `max_length=512`, jaxalign
    `max_prompt_length=256`. The mean tokens per sequence and the fraction cut at 512 are printed.

Tokenization and truncation, checked on every run (the TRL subprocess compares its tokenized,
truncated sequences with jaxalign's `build_dataset` arrays and prints how many pairs are identical):
  * EOS: jaxalign appends the EOS id to a plain-string completion (`encode_prompt_completion`); TRL 1.16
    appends the string `tokenizer.eos_token` to `chosen`/`rejected` unless already there ("Adding EOS")
    and the tokenizer maps it to the same id. The rows therefore carry no EOS of their own.
  * Prompt/completion boundary: jaxalign tokenizes `prompt` and `completion` separately
    (`tokenizer(prompt) + tokenizer(completion, add_special_tokens=False) + [EOS]`); TRL tokenizes the
    concatenated string `prompt + completion` and splits it where it diverges from `tokenizer(prompt)`.
    Completions start with a space, so the byte-level pre-tokenizer splits at the boundary and both give
    the same ids.
  * Truncation: TRL 1.16 dropped `max_prompt_length`: its only truncation is `max_length` with
    `truncation_mode="keep_start"` (cut prompt+completion from the right). jaxalign keeps the last
    `max_prompt_length` prompt tokens, then the first `max_length - len(prompt)` completion tokens. To give
    both sides the same sequences the generator never writes a prompt longer than `max_prompt_length`
    tokens (var: words dropped from the left), so only completions are cut, identically on both sides
    (a cut completion loses its EOS on both).
  * Padding (not the same, on purpose: that is what each user gets): TRL pads to the longest sequence
    of the batch. jaxalign's DPO default is now padding-free batches (`data.packing=True` in
    jaxalign/defaults.py: each batch's sequences packed into few rows of `max_length`);
    `--jax_args=--config.data.packing=False` gives one row per sequence padded to `max_length`. The
    sequence check above is about tokens and truncation, which packing does not change.

Sanity check printed per round: the mean `logps/chosen` over the run on both sides (same model, same
sequences; measured within 1 nat of each other, e.g. -865.8 vs -865.6: the two sides shuffle the rows
differently, so the averages are over different batches).

Each round runs jaxalign then TRL for each workload; the final table has the medians over rounds, the
ratio TRL/jaxalign (jaxalign's speed-up), pairs/s, and the 1-minute load average at the start and end of
every run (`os.getloadavg()`; another process on the machine skews the figures). The default run
(both workloads, 2 rounds, 40 steps) takes roughly half an hour on 2 busy cores, most of it W-DPO-var;
`--steps=20 --log_every=5` halves it.

Measured once, 2 CPU cores shared with another job (load average 3.7-4.9), `--steps=12 --log_every=4
--rounds=1`, with jaxalign's padded rows (before padding-free became the default): uniform jaxalign
1816 ms/step, TRL 3839 ms/step (TRL/jaxalign 2.11); var jaxalign 13502, TRL 11414 (0.85: every jaxalign
row padded to 512, TRL's batches to their longest sequence). With padding-free batches (the default
since), `--workload=var --steps=8 --log_every=4 --rounds=1`: jaxalign 4575 ms/step, TRL 10552 (2.31).
Noisy figures.
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time

import cli_runner
from cli_runner import loadavg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The model of every workload.
HIDDEN, LAYERS, HEADS, HEAD_DIM, INTERMEDIATE, VOCAB = 256, 4, 8, 32, 688, 1024
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
PAIRS = 8  # pairs per step, both sides
BETA, LR = 0.1, 1e-5
WORKLOADS = {
    # name: (max_length, max_prompt_length)
    "uniform": (128, 64),
    "var": (512, 256),
}
UNIFORM_PROMPT, UNIFORM_COMPLETION = 64, 64  # tokens, BOS and EOS included


# --------------------------------------------------------------------------------------------- assets
def make_lexicon(rng, n=20000):
    """Random lower-case 'words' of 2-10 letters, with Zipf-like frequencies (realistic BPE merges)."""
    import numpy as np

    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = sorted({"".join(rng.choice(letters, int(k))) for k in rng.integers(2, 11, n)})
    words = [words[i] for i in rng.permutation(len(words))]
    p = 1.0 / np.arange(1, len(words) + 1)
    return words, p / p.sum()


def make_model_and_tokenizer(model_dir, seed):
    """Saves the random Llama and the trained byte-level BPE tokenizer into `model_dir`. Returns the lexicon."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = np.random.default_rng(seed)
    words, p = make_lexicon(rng)
    corpus = [" ".join(line) for line in rng.choice(words, (4000, 50), p=p)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=VOCAB,
            special_tokens=[PAD, BOS, EOS],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    hf_tok.save_pretrained(model_dir)

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=hf_tok.pad_token_id,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        dtype="float32",
    )
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(model_dir, safe_serialization=True)
    return hf_tok, words, p


# ----------------------------------------------------------------------------------------------- rows
class RowMaker:
    """Prompt/completion strings with controlled token counts (completions start with a space)."""

    def __init__(self, tok, words, p, rng):
        import numpy as np

        self.tok, self.words, self.p, self.rng = tok, words, p, rng
        enc = lambda xs: [len(ids) for ids in tok(xs, add_special_tokens=False)["input_ids"]]
        self.n_first = dict(zip(words, enc(words)))  # a word at the start of the text
        self.n_space = dict(zip(words, enc([" " + w for w in words])))  # a word after a space
        self.by_len = {}
        for w, n in self.n_space.items():
            self.by_len.setdefault(n, []).append(w)
        if 1 not in self.by_len:
            raise RuntimeError("no single-token word in the lexicon: cannot build exact lengths")
        self.cdf = np.cumsum(p)
        self.cdf[-1] = 1.0
        self.np = np

    def _count(self, ws, first):
        return sum((self.n_first if first and i == 0 else self.n_space)[w] for i, w in enumerate(ws))

    def exact(self, n_tokens, first):
        """Words whose text (joined by spaces; with a leading space unless `first`) is `n_tokens` tokens."""
        ws, used = [], 0
        while True:
            w = self.words[int(self.np.searchsorted(self.cdf, self.rng.random(), side="right"))]
            n = (self.n_first if first and not ws else self.n_space)[w]
            if used + n > n_tokens:
                break
            ws.append(w)
            used += n
        while used < n_tokens:  # fill the gap with words of known length
            k = max(m for m in self.by_len if m <= n_tokens - used)
            if not ws and first:  # (the gap-filler must not be the first word)
                k = 1
                cands = [w for w in self.by_len[1] if self.n_first[w] == 1]
            else:
                cands = self.by_len[k]
            ws.append(cands[self.rng.integers(len(cands))])
            used += k
        assert self._count(ws, first) == n_tokens
        return ws

    def sample(self, n_words):
        return [self.words[i] for i in self.np.searchsorted(self.cdf, self.rng.random(n_words), side="right")]

    def trim_left(self, ws, max_tokens):
        """Drops words from the left until the prompt text is at most `max_tokens` tokens."""
        while len(ws) > 1 and self._count(ws, True) > max_tokens:
            ws = ws[1:]
        return ws


def make_rows(workload, n, tok, words, p, seed):
    import numpy as np

    rng = np.random.default_rng([seed, 1 if workload == "uniform" else 2])
    maker = RowMaker(tok, words, p, rng)
    rows = []
    for _ in range(n):
        if workload == "uniform":
            prompt = maker.exact(UNIFORM_PROMPT - 1, first=True)  # + BOS
            chosen = maker.exact(UNIFORM_COMPLETION - 1, first=False)  # + EOS
            rejected = maker.exact(UNIFORM_COMPLETION - 1, first=False)
        else:
            _, max_prompt = WORKLOADS["var"]
            n_p = int(np.clip(round(rng.lognormal(3.0, 0.7)), 3, 150))
            n_c, n_r = (int(np.clip(round(x), 2, 200)) for x in rng.lognormal(3.6, 0.8, 2))
            prompt = maker.trim_left(maker.sample(n_p), max_prompt - 1)  # + BOS <= max_prompt_length
            chosen, rejected = maker.sample(n_c), maker.sample(n_r)
        rows.append(
            {
                "prompt": " ".join(prompt),
                "chosen": " " + " ".join(chosen),
                "rejected": " " + " ".join(rejected),
            }
        )
    return rows


def jaxalign_sequences(data_path, tok, max_length, max_prompt_length):
    """The token sequences jaxalign's CLI trains on (`build_dataset` as `trainers/setup.py` calls it)."""
    sys.path.insert(0, REPO)
    from jaxalign.data import pipeline

    ds = pipeline.build_dataset(
        data_path,
        kind="preference",
        tokenizer=tok,
        format="auto",
        max_length=max_length,
        max_prompt_length=max_prompt_length,
    )
    out = []
    for i in range(len(ds)):
        pair = {}
        for side in ("chosen", "rejected"):
            n = int((ds.arrays[f"{side}_segment_ids"][i] > 0).sum())  # L - 1 (input, target) pairs
            ids = ds.arrays[f"{side}_input_ids"][i, :n].tolist() + [
                int(ds.arrays[f"{side}_targets"][i, n - 1])
            ]
            pair[side] = ids
            pair[side + "_targets"] = int(ds.arrays[f"{side}_loss_mask"][i, :n].sum())
        out.append(pair)
    return out, ds.num_truncated


# ------------------------------------------------------------------------------------------ jaxalign
def run_jaxalign(args, model_dir, data_path, workload, workdir):
    max_length, max_prompt = WORKLOADS[workload]
    cmd = [
        sys.executable,
        "-m",
        "jaxalign.main",
        "--config=configs/dpo.py",
        f"--workdir={workdir}",
        f"--config.model.path={model_dir}",
        f"--config.data.train={data_path}",
        "--config.data.eval=",
        f"--config.data.max_length={max_length}",
        f"--config.data.max_prompt_length={max_prompt}",
        f"--config.train.batch_size={PAIRS}",
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
        f"--config.dpo.beta={BETA}",
        "--config.dpo.loss_type=sigmoid",
        "--config.dpo.rpo_alpha=0",
        "--config.model.dtype=float32",
        "--config.model.param_dtype=float32",
    ]
    cmd += shlex.split(args.jax_args)
    out = cli_runner.run_jaxalign(cmd[1:], workdir, args.jaxalign_root)
    logps = [r["train/logps/chosen"] for r in out["recs"] if "train/logps/chosen" in r]
    out["logps_chosen"] = statistics.fmean(logps) if logps else float("nan")
    return out


# ----------------------------------------------------------------------------------------------- TRL
def run_trl_side(args):
    """The `--side=trl` subprocess: trains, times each step, writes a JSON result to `--result`."""
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    la0 = loadavg()
    max_length, _ = WORKLOADS[args.workload]
    with open(args.data) as f:
        rows = [json.loads(line) for line in f]
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    config = trl.DPOConfig(
        output_dir=os.path.join(args.workdir, "out"),
        max_steps=args.steps,
        num_train_epochs=1,
        per_device_train_batch_size=PAIRS,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        optim="adamw_torch",
        beta=BETA,
        loss_type=["sigmoid"],
        max_length=max_length,
        precompute_ref_log_probs=False,
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
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        processing_class=tok,
        train_dataset=Dataset.from_list(rows),
        callbacks=[timer],
    )

    # Are these the sequences jaxalign trains on? (TRL's tokenized rows through its own collator.)
    same, n_check, first_diff = 0, 0, None
    if args.expect:
        with open(args.expect) as f:
            expect = json.load(f)
        ds = trainer.train_dataset
        n_check = min(len(ds), len(expect))
        for i in range(n_check):
            ex = {k: ds[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
            b = trainer.data_collator([ex])
            got = {}
            for j, side in enumerate(("chosen", "rejected")):
                n = int(b["attention_mask"][j].sum())
                got[side] = b["input_ids"][j, :n].tolist()
                got[side + "_targets"] = int(b["completion_mask"][j].sum())
            if all(got[k] == expect[i][k] for k in got):
                same += 1
            elif first_diff is None:  # where the first differing pair differs (compact)
                first_diff = {
                    "row": i,
                    **{
                        f"{k}_{side}": (len(v[side]), v[side + "_targets"])
                        for k, v in (("trl", got), ("jaxalign", expect[i]))
                        for side in ("chosen", "rejected")
                    },
                }
        if len(ds) != len(expect):
            first_diff = first_diff or {"rows": [len(ds), len(expect)]}

    t0 = time.time()
    trainer.train()
    wall = time.time() - t0
    logged = trainer.state.log_history[-1] if trainer.state.log_history else {}
    result = {
        **timer.summary(args.log_every),  # the same steps as jaxalign's post-warm-up records
        "wall_s": wall,
        "load_start": la0,
        "load_end": loadavg(),
        "torch_threads": torch.get_num_threads(),
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "logps_chosen": float(logged.get("logps/chosen", float("nan"))),
        "identical_pairs": same,
        "checked_pairs": n_check,
        "first_diff": first_diff,
    }
    with open(args.result, "w") as f:
        json.dump(result, f)


def run_trl(args, model_dir, data_path, expect_path, workload, workdir):
    return cli_runner.run_trl(
        os.path.abspath(__file__),
        [
            f"--workload={workload}",
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
    ap.add_argument("--workload", default="both", choices=["uniform", "var", "both"])
    ap.add_argument("--steps", type=int, default=40, help="training steps per run (both sides)")
    ap.add_argument(
        "--log_every",
        type=int,
        default=10,
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
    ap.add_argument("--workdir", default="", help="where models, data and runs go (default: a temp dir)")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    # The TRL subprocess (internal).
    ap.add_argument("--side", default="", choices=["", "trl"], help=argparse.SUPPRESS)
    for name in ("model_dir", "data", "expect", "result"):
        ap.add_argument(f"--{name}", default="", help=argparse.SUPPRESS)
    return ap.parse_args()


def jaxalign_packing(args):
    """data.packing as the jaxalign run will see it: configs/dpo.py's default unless --jax_args sets it."""
    for a in shlex.split(args.jax_args):
        if a.startswith("--config.data.packing="):
            return a.split("=", 1)[1]
    try:
        sys.path.insert(0, args.jaxalign_root)
        from configs import dpo

        return str(dpo.get_config().data.packing)
    except Exception as e:  # noqa: BLE001 (only informative)
        return f"? ({e})"


def main():
    args = parse_args()
    if args.side == "trl":
        run_trl_side(args)
        return
    if args.steps < 2 * args.log_every:
        sys.exit(
            f"--steps={args.steps} must be >= 2 * --log_every={args.log_every} (the first record is warm-up)"
        )
    workloads = ["uniform", "var"] if args.workload == "both" else [args.workload]
    root = args.workdir or tempfile.mkdtemp(prefix="dpo_cli_vs_trl_")
    os.makedirs(root, exist_ok=True)
    model_dir = os.path.join(root, "model")
    import numpy as np
    import torch

    tok, words, p = make_model_and_tokenizer(model_dir, args.seed)
    print(f"workdir {root}; model + tokenizer in {model_dir}")
    print(
        f"Llama d={HIDDEN} L={LAYERS} heads={HEADS}x{HEAD_DIM} mlp={INTERMEDIATE} vocab={VOCAB}, float32; "
        f"{PAIRS} pairs/step, {args.steps} steps, timed steps {args.log_every + 1}-{args.steps}; "
        f"cpus={os.cpu_count()} torch threads={torch.get_num_threads()}; jax_args={args.jax_args!r}; "
        f"jaxalign data.packing={jaxalign_packing(args)} (True = padding-free batches)"
    )

    data, stats = {}, {}
    for wl in workloads:
        max_length, max_prompt = WORKLOADS[wl]
        rows = make_rows(wl, args.steps * PAIRS, tok, words, p, args.seed)
        path = os.path.join(root, f"{wl}.jsonl")
        with open(path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        seqs, truncated = jaxalign_sequences(path, tok, max_length, max_prompt)
        expect = os.path.join(root, f"{wl}_jaxalign_sequences.json")
        with open(expect, "w") as f:
            json.dump(seqs, f)
        lens = np.array([len(s[k]) for s in seqs for k in ("chosen", "rejected")])
        full = np.array(
            [
                len(tok(r["prompt"])["input_ids"]) + len(tok(r[k], add_special_tokens=False)["input_ids"]) + 1
                for r in rows
                for k in ("chosen", "rejected")
            ]
        )
        stats[wl] = {
            "rows": len(rows),
            "mean_tokens": float(lens.mean()),
            "min_tokens": int(lens.min()),
            "max_tokens": int(lens.max()),
            "frac_at_max_length": float((lens == max_length).mean()),
            "mean_tokens_untruncated": float(full.mean()),
            "pairs_truncated": int(truncated),
            "max_length": max_length,
            "max_prompt_length": max_prompt,
        }
        data[wl] = (path, expect)
        s = stats[wl]
        print(
            f"[{wl}] {len(rows)} pairs, max_length={max_length}: tokens/sequence mean {s['mean_tokens']:.1f} "
            f"(min {s['min_tokens']}, max {s['max_tokens']}; {s['mean_tokens_untruncated']:.1f} before "
            f"truncation), {100 * s['frac_at_max_length']:.1f}% of sequences at {max_length}, "
            f"{truncated} pairs truncated",
            flush=True,
        )

    runs = {wl: [] for wl in workloads}
    for rnd in range(args.rounds):
        for wl in workloads:
            path, expect = data[wl]
            print(f"round {rnd + 1}/{args.rounds} {wl}: jaxalign", flush=True)
            jx = run_jaxalign(args, model_dir, path, wl, os.path.join(root, f"r{rnd}_{wl}_jaxalign"))
            print(f"  {jx['describe']}", flush=True)
            print(
                f"  jaxalign: {1e3 * jx['step_s']:.1f} ms/step (records {[(s, round(1e3 * t, 1)) for s, t in jx['records']]}"
                f" ms; first = compile), wall {jx['wall_s']:.0f}s, load {jx['load_start']:.2f} -> "
                f"{jx['load_end']:.2f}",
                flush=True,
            )
            print(f"round {rnd + 1}/{args.rounds} {wl}: TRL", flush=True)
            tr = run_trl(args, model_dir, path, expect, wl, os.path.join(root, f"r{rnd}_{wl}_trl"))
            print(
                f"  TRL {tr['trl']}: {1e3 * tr['step_s']:.1f} ms/step median of steps {tr['timed_steps']} "
                f"(mean {1e3 * tr['mean_step_s']:.1f}, end-to-end interval {1e3 * tr['interval_s']:.1f}; first "
                f"steps {[round(1e3 * t) for t in tr['first_steps_s']]} ms), torch threads {tr['torch_threads']}, "
                f"wall {tr['process_wall_s']:.0f}s, load {tr['load_start']:.2f} -> {tr['load_end']:.2f}",
                flush=True,
            )
            print(
                f"  sequences identical on both sides: {tr['identical_pairs']}/{tr['checked_pairs']} pairs"
                + (f"; first difference {tr['first_diff']}" if tr["first_diff"] else "")
                + f"; mean logps/chosen over the run: jaxalign {jx['logps_chosen']:.1f}, TRL {tr['logps_chosen']:.1f}",
                flush=True,
            )
            print(f"  round {rnd + 1} {wl}: TRL/jaxalign = {tr['step_s'] / jx['step_s']:.2f}", flush=True)
            runs[wl].append({"jaxalign": jx, "trl": tr})

    print(
        f"\nDPO step, {PAIRS} pairs, CPU ({os.cpu_count()} cores), median over {args.rounds} round(s), "
        f"steps {args.log_every + 1}-{args.steps}:"
    )
    head = (
        f"{'workload':9} {'jaxalign ms':>11} {'TRL ms':>8} {'TRL/jax':>7} {'TRL e2e ms':>10} {'e2e/jax':>7} "
        f"{'jax pairs/s':>11} {'TRL pairs/s':>11}  load avg (start->end) jaxalign | TRL"
    )
    print(head)
    table = {}
    for wl in workloads:
        jx = statistics.median(r["jaxalign"]["step_s"] for r in runs[wl])
        tr = statistics.median(r["trl"]["step_s"] for r in runs[wl])
        e2e = statistics.median(r["trl"]["interval_s"] for r in runs[wl])
        loads = " ; ".join(
            f"{r['jaxalign']['load_start']:.2f}->{r['jaxalign']['load_end']:.2f} | "
            f"{r['trl']['load_start']:.2f}->{r['trl']['load_end']:.2f}"
            for r in runs[wl]
        )
        table[wl] = {
            "jaxalign_ms": 1e3 * jx,
            "trl_ms": 1e3 * tr,
            "ratio": tr / jx,
            "trl_interval_ms": 1e3 * e2e,
            "ratio_interval": e2e / jx,
            "jaxalign_pairs_s": PAIRS / jx,
            "trl_pairs_s": PAIRS / tr,
        }
        t = table[wl]
        print(
            f"{wl:9} {t['jaxalign_ms']:11.1f} {t['trl_ms']:8.1f} {t['ratio']:7.2f} {t['trl_interval_ms']:10.1f} "
            f"{t['ratio_interval']:7.2f} {t['jaxalign_pairs_s']:11.2f} {t['trl_pairs_s']:11.2f}  {loads}"
        )
    print(
        "TRL/jaxalign = jaxalign's speed-up (goal >= 2.0); e2e = TRL's step_end-to-step_end interval "
        "(collation and logging included)."
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "data": stats, "runs": runs, "table": table}, f, indent=1)
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
