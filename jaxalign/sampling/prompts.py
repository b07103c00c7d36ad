"""Host-side glue between text and the sampler: left-padded prompt batches in, strings out.

batch = build_prompt_batch(tokenizer, ["what is 2 plus 3?"], chat=True)
out = generate(model, params, batch["prompt_ids"], batch["prompt_segment_ids"], rng, ...,
               eos_ids=eos_ids_of(tokenizer), pad_id=pad_id_of(tokenizer))
texts = decode_completions(tokenizer, out)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def pad_id_of(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (padding is masked out, its id only has to be valid)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an EOS token; pass pad_id explicitly")
    return int(pad)


def eos_ids_of(tokenizer, extra: Sequence[int] = ()) -> tuple[int, ...]:
    """The tokenizer's EOS id plus `extra` ids (e.g. a chat model's end-of-turn token)."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    return tuple(dict.fromkeys(ids + [int(i) for i in extra]))


def encode_stop_strings(tokenizer, stop_strings: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Stop strings -> token-id sequences for `generate(stop_sequences=...)`.

    A string is tokenised on its own (no special tokens). BPE may tokenise it differently inside a
    longer text (e.g. merged with a preceding space), so the on-device match is exact for the usual
    case — a stop string starting at a token boundary — and `decode_completions(stop_strings=...)`
    also cuts the text host-side.
    """
    out = []
    for s in stop_strings:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"stop string {s!r} tokenises to nothing")
        out.append(tuple(int(i) for i in ids))
    return tuple(out)


def _encode(tokenizer, prompt, chat: bool) -> list[int]:
    if chat:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    if not isinstance(prompt, str):
        raise ValueError("chat=False needs string prompts, got messages")
    return [int(i) for i in tokenizer(prompt)["input_ids"]]


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None, pad_to_multiple: int = 1
) -> dict[str, np.ndarray]:
    """Token lists -> left-padded numpy prompt batch.

    Args:
      sequences: B lists of token ids.
      length: P; default the longest sequence rounded up to `pad_to_multiple` (a few distinct P values
        keep recompilation of the sampler rare). Longer sequences keep their *last* P tokens (the end
        of a chat prompt holds the generation prompt).

    Returns:
      prompt_ids [B, P] int32, prompt_positions [B, P] int32 (0 at each row's first real token),
      prompt_segment_ids [B, P] int32 (1 real, 0 padding).
    """
    if length is None:
        longest = max((len(s) for s in sequences), default=1)
        length = -(-max(longest, 1) // pad_to_multiple) * pad_to_multiple
    b = len(sequences)
    ids = np.full((b, length), pad_id, np.int32)
    seg = np.zeros((b, length), np.int32)
    for i, s in enumerate(sequences):
        s = list(s)[-length:]
        if s:
            ids[i, length - len(s) :] = s
            seg[i, length - len(s) :] = 1
    positions = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
    return {"prompt_ids": ids, "prompt_positions": positions, "prompt_segment_ids": seg}


def build_prompt_batch(
    tokenizer,
    prompts: Sequence[Any],
    *,
    chat: bool = True,
    max_length: int | None = None,
    pad_to_multiple: int = 1,
    pad_id: int | None = None,
) -> dict[str, np.ndarray]:
    """Prompts -> left-padded batch (the data pipeline's RL prompt-batch keys).

    Args:
      prompts: strings, or (with chat=True) message lists [{"role": ..., "content": ...}, ...]; a
        string with chat=True becomes one user message.
      chat: apply the tokenizer's chat template with `add_generation_prompt=True`; otherwise tokenise
        the raw text (with the tokenizer's own special tokens, e.g. BOS).
      max_length, pad_to_multiple: see `left_pad`.

    Returns:
      {"prompt_ids", "prompt_positions", "prompt_segment_ids"}: [B, P] int32 numpy arrays.
    """
    seqs = [_encode(tokenizer, p, chat) for p in prompts]
    return left_pad(seqs, pad_id_of(tokenizer) if pad_id is None else pad_id, max_length, pad_to_multiple)


def decode_completions(
    tokenizer, out, *, skip_special_tokens: bool = True, stop_strings: Sequence[str] = ()
) -> list[str]:
    """GenerateOutput (or anything with `tokens`, `mask`) -> one string per row.

    Keeps the masked-in tokens (so pad after a row is done is dropped), drops special tokens (EOS, pad)
    with `skip_special_tokens`, and cuts each text at the first of `stop_strings` (stop string excluded).
    """
    tokens = np.asarray(out.tokens)
    mask = np.asarray(out.mask).astype(bool)
    texts = []
    for row, m in zip(tokens, mask):
        text = tokenizer.decode([int(t) for t in row[m]], skip_special_tokens=skip_special_tokens)
        for s in stop_strings:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        texts.append(text)
    return texts
