"""Sample completions from one or more Hugging Face-format checkpoints, side by side.

  python -m jaxalign.sample --checkpoint=runs/sft/export,runs/dpo/export \
      --prompt="what's 3 plus 7?" --prompt="compute 2 minus 0." --max_new_tokens=32

Each prompt is wrapped in the tokenizer's chat template as one user message (with the generation
prompt); `--nochat` (or `--chat=false`) tokenises the raw text instead. `--checkpoint` takes a
comma-separated list and may be repeated; every checkpoint uses its own tokenizer. `--temperature=0`
(the default) is greedy decoding, so two checkpoints are compared on their most likely answers.
"""

from __future__ import annotations

from typing import Sequence

from absl import app, flags

_CHECKPOINT = flags.DEFINE_multi_string(
    "checkpoint",
    None,
    "HF model directory (config.json, safetensors, tokenizer); "
    "comma-separated and/or repeated to compare several.",
)
_PROMPT = flags.DEFINE_multi_string("prompt", None, "A prompt; repeat for a batch.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "Tokens generated at most per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1] (1 = off).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Completions per prompt (useful with temperature > 0).")
_CHAT = flags.DEFINE_bool("chat", True, "Apply the chat template (add_generation_prompt=True).")
_STOP = flags.DEFINE_multi_string("stop", [], "Stop string(s), in addition to the EOS token.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")


def sample_texts(
    checkpoint: str,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    num_samples: int = 1,
    chat: bool = True,
    stop: Sequence[str] = (),
    dtype: str = "float32",
) -> list[list[str]]:
    """Loads `checkpoint` and returns, per prompt, `num_samples` completions (special tokens and
    anything from a stop string on removed)."""
    import jax

    from jaxalign import models, sampling
    from jaxalign.checkpoints import load_hf_model, load_tokenizer

    config, params = load_hf_model(checkpoint, dtype=dtype)
    tokenizer = load_tokenizer(checkpoint)
    model = models.Transformer(config)
    extra_eos = (
        config.eos_token_id
        if isinstance(config.eos_token_id, tuple)
        else (() if config.eos_token_id is None else (config.eos_token_id,))
    )
    rows = [p for p in prompts for _ in range(num_samples)]
    batch = sampling.build_prompt_batch(tokenizer, rows, chat=chat)
    out = sampling.generate(
        model,
        params,
        batch["prompt_ids"],
        batch["prompt_segment_ids"],
        jax.random.key(seed),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=sampling.eos_ids_of(tokenizer, extra_eos),
        pad_id=sampling.pad_id_of(tokenizer),
        stop_sequences=sampling.encode_stop_strings(tokenizer, stop),
    )
    texts = sampling.decode_completions(tokenizer, jax.device_get(out), stop_strings=stop)
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    checkpoints = [c for arg in _CHECKPOINT.value for c in arg.split(",") if c]
    results = {
        c: sample_texts(
            c,
            _PROMPT.value,
            max_new_tokens=_MAX_NEW_TOKENS.value,
            temperature=_TEMPERATURE.value,
            top_k=_TOP_K.value,
            top_p=_TOP_P.value,
            seed=_SEED.value,
            num_samples=_NUM_SAMPLES.value,
            chat=_CHAT.value,
            stop=_STOP.value,
            dtype=_DTYPE.value,
        )
        for c in checkpoints
    }
    for i, prompt in enumerate(_PROMPT.value):
        print(f"=== prompt {i + 1}: {prompt}")
        for c in checkpoints:
            for j, text in enumerate(results[c][i]):
                tag = f" #{j + 1}" if _NUM_SAMPLES.value > 1 else ""
                print(f"--- {c}{tag}\n{text}")
        print()


if __name__ == "__main__":
    from jaxalign.errors import run_main

    flags.mark_flags_as_required(["checkpoint", "prompt"])
    run_main(main)  # a bad flag or checkpoint: `error: <one line>`, exit code 2 (--verbosity=1: traceback)
