"""DPO on a Llama-3.2-1B-shaped random model through the CLI, bf16, sequences of 2048: tokens/s and MFU.

A benchmark, not a test. Run it on a GPU (or TPU) machine from the repository root:

  pip install -e ".[gpu]"
  python benchmarks/gpu_step.py                                # 1B shape, 8 pairs × 2048 tokens, 30 steps
  python benchmarks/gpu_step.py --pairs=16 --remat=True        # a bigger batch, activations recomputed
  python benchmarks/gpu_step.py --tiny --steps=6               # a 2-layer model: checks the script on a CPU

What runs: `python -m jaxalign.main --config=<workdir>/config.py` (configs/dpo.py with the fields below),
so the figures are what a user gets: padding-free batches, the frozen reference forward every step,
AdamW, the metric fetch every `--log_every` steps. Model: random init from `model.init` with Llama-3.2-1B's
architecture (hidden 2048, 16 layers, 32 query / 8 KV heads of 64, MLP 8192, vocab 128,256, tied
embeddings, llama3 RoPE), bfloat16 compute over float32 master weights. Data: random-word pairs from a
small BPE tokenizer (the model's vocabulary is still 128,256: the LM head and its log-softmax cost the
same), prompt and completions long enough that every sequence is cut to `--seq` tokens.

Printed: the start-up line naming the attention kernel, then per logged step `perf/tokens_per_s`,
`perf/tflops_per_s` and `perf/mfu` from `metrics.jsonl` (model FLOPs as `jaxalign/trainers/flops.py`
counts them: 3 passes for the policy + 1 for the reference, causal attention, no padding), and their
medians over the records after the first (which includes compilation).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LLAMA_3_2_1B = dict(
    model_type="llama",
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    rope_scaling=dict(
        rope_type="llama3",
        factor=32.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    ),
)
TINY = dict(
    LLAMA_3_2_1B,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    vocab_size=4096,
)

CONFIG = '''"""Written by benchmarks/gpu_step.py."""
from configs import dpo


def get_config(arg=None):
  c = dpo.get_config()
  with c.unlocked():
    c.model.path = ""
    c.model.tokenizer = {tokenizer!r}
    c.model.init = {init!r}
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = {remat}
    c.model.scan_layers = True
    c.data.train = {data!r}
    c.data.eval = ""
    c.data.max_length = {seq}
    c.data.max_prompt_length = {prompt}
    c.train.batch_size = {pairs}
    c.train.num_steps = {steps}
    c.train.log_every = {log_every}
    c.train.export_hf = False
    c.train.checkpoint_every = 0
    c.optimizer.learning_rate = 1e-6
    c.optimizer.warmup_steps = 0
    c.dpo.rpo_alpha = 0.0
  return c
'''


def make_tokenizer(path, seed=0):
    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = sorted({"".join(rng.choice(letters, int(k))) for k in rng.integers(2, 9, 5000)})
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [" ".join(rng.choice(words, 40)) for _ in range(2000)],
        trainers.BpeTrainer(
            vocab_size=2000,
            special_tokens=["<pad>", "<s>", "</s>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(path)
    return words


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--log_every", type=int, default=5)
    ap.add_argument("--remat", default="False", choices=["True", "False"])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer d=128 model (checks the script on a CPU)")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--extra", default="", help="more --config.* flags for the CLI, verbatim")
    ap.add_argument("--json_out", default="", help="also write the summary to this file")
    args = ap.parse_args()
    import numpy as np

    work = args.workdir or tempfile.mkdtemp(prefix="gpu_step_")
    os.makedirs(work, exist_ok=True)
    words = make_tokenizer(os.path.join(work, "tokenizer"))
    rng = np.random.default_rng(1)
    text = lambda n: " ".join(rng.choice(words, n))
    # A word is ~2-3 tokens here: these lengths are cut to seq (the prompt to seq/2 from the left).
    n_rows = args.pairs * (args.steps + 1)
    with open(os.path.join(work, "pairs.jsonl"), "w") as f:
        for _ in range(n_rows):
            f.write(
                json.dumps(
                    {
                        "prompt": text(args.seq // 2),
                        "chosen": " " + text(args.seq),
                        "rejected": " " + text(args.seq),
                    }
                )
                + "\n"
            )
    with open(os.path.join(work, "config.py"), "w") as f:
        f.write(
            CONFIG.format(
                tokenizer=os.path.join(work, "tokenizer"),
                init=TINY if args.tiny else LLAMA_3_2_1B,
                remat=args.remat,
                data=os.path.join(work, "pairs.jsonl"),
                seq=args.seq,
                prompt=args.seq // 2,
                pairs=args.pairs,
                steps=args.steps,
                log_every=args.log_every,
            )
        )
    run_dir = os.path.join(work, "run")
    cmd = [
        sys.executable,
        "-m",
        "jaxalign.main",
        f"--config={os.path.join(work, 'config.py')}",
        f"--workdir={run_dir}",
    ] + args.extra.split()
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if "perf/tokens_per_s" in line]
    later = recs[1:] or recs
    summary = {
        k: statistics.median(r[k] for r in later)
        for k in ("perf/tokens_per_s", "perf/tflops_per_s", "perf/mfu", "perf/step_time_s")
        if k in later[0]
    }
    import jax

    summary.update(
        device=jax.devices()[0].device_kind,
        devices=jax.device_count(),
        pairs=args.pairs,
        seq=args.seq,
        remat=args.remat,
        model="tiny" if args.tiny else "llama-3.2-1b-shape",
        wall_s=round(time.time() - t0, 1),
        records=len(later),
    )
    print(json.dumps(summary, indent=1))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
