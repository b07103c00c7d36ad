"""The public way to load data: `load` (rows -> tokenized dataset) and its first half, `read`.

    from jaxalign import data
    ds = data.load("train.jsonl", kind="sft", tokenizer=tok, max_length=512)
    it = data.BatchIterator(ds, global_batch_size=32)

`read(path, kind=...)` opens the rows (`sources`), detects their format and checks every row (`formats`)
without a tokenizer, so a bad file fails in a fraction of a second, before any model is loaded; the
trainers call it first and hand its result to `load`. Every problem with the data raises
`jaxalign.errors.DataError` whose message starts with where it is: ``<file> line <N>:`` (``item N`` in a
JSON array, ``row N`` in parquet, all 1-based).
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging

from jaxalign.data import formats, pipeline, sources
from jaxalign.errors import ConfigError, DataError


class Rows(sources.RowSource):
    """Checked rows: every row normalized to its kind's example (`formats`). ``format`` is the format that
    was detected (or given), ``kind`` the dataset kind they were checked for, ``skipped`` the messages of
    the bad rows left out (`read(skip_bad_rows=N)`)."""

    def __init__(self, examples: list[dict], name: str, locate, kind: str, format: str):
        super().__init__(examples, name, locate)
        self.kind, self.format = kind, format
        self.skipped: list[str] = []

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def read(
    path: Any,
    *,
    kind: str,
    format: str = "auto",
    split: str = "train",
    data_dir: str | None = None,
    skip_bad_rows: int = 0,
) -> Rows:
    """Opens `path` and checks every row for dataset `kind`; no tokenizer needed.

    Args:
      path: a .jsonl/.json/.parquet file, a directory of them, a list of files, a hub dataset name,
        ``"tfds:name"``, a list of dict rows or a ``datasets.Dataset`` (see `sources`).
      kind: "clm" | "sft" | "preference" | "kto" | "prompt".
      format: "auto" (detect from the first row) or a format name from `formats.FORMATS`.
      split: which split of a directory / hub / TFDS dataset.
      data_dir: TFDS data directory.
      skip_bad_rows: up to this many bad rows are left out (each named in a warning, the first few, and
        counted in ``Rows.skipped``); one more is the error. 0: the first bad row is the error.

    Raises:
      DataError: the first bad row or file, as ``<file> line <N>: <what is wrong and what was expected>``.
    """
    if isinstance(path, Rows) and path.kind == kind:
        return path
    if (
        kind == "kto"
        and isinstance(path, (list, tuple))
        and len(path) > 1
        and all(isinstance(p, (str, os.PathLike)) for p in path)
    ):  # each file in its own format: KTO rows, or preference pairs to unpair
        parts = [
            read(p, kind=kind, format=format, split=split, data_dir=data_dir, skip_bad_rows=skip_bad_rows)
            for p in path
        ]
        return _concat(parts, kind)
    source = sources.load_rows(path, split, data_dir=data_dir)
    if len(source) == 0:
        raise DataError(f"{source.name}: no rows")
    if kind == "kto" and _pairs(source, format):  # KTO from preference pairs, unpaired as TRL does
        return unpair(read(source, kind="preference", format=format, skip_bad_rows=skip_bad_rows))
    adapt = formats.make_adapter(kind, format)
    if not skip_bad_rows:
        examples = [adapt(source[i], source.locate(i)) for i in range(len(source))]
        return Rows(examples, source.name, source.locate, kind, adapt.format)
    examples, kept, bad = [], [], []
    for i in range(len(source)):
        try:
            examples.append(adapt(source[i], source.locate(i)))
            kept.append(i)
        except DataError as e:
            bad.append(str(e))
            if len(bad) > skip_bad_rows:
                raise DataError(
                    f"{e} (the {len(bad)}th bad row: more than data.skip_bad_rows={skip_bad_rows}; the first: "
                    f"{bad[0]})"
                    if len(bad) > 1
                    else str(e)
                ) from None
    if not examples:
        raise DataError(f"{source.name}: every row is bad; the first: {bad[0]}")
    if bad:
        logging.warning(
            "%s: skipped %d bad row(s) of %d (data.skip_bad_rows=%d); the first: %s",
            source.name,
            len(bad),
            len(source),
            skip_bad_rows,
            " | ".join(bad[:3]),
        )
    rows = Rows(examples, source.name, lambda j: source.locate(kept[j]), kind, adapt.format)
    rows.skipped = bad
    return rows


def _concat(parts: list[Rows], kind: str) -> Rows:
    """Rows of several files, in order; each row still names its own file and line."""
    examples, where = [], []
    for part in parts:
        examples.extend(part.rows)
        where.extend((part, j) for j in range(len(part.rows)))

    def locate(i: int) -> str:
        part, j = where[i]
        return part.locate(j)

    formats_ = sorted({part.format for part in parts})
    rows = Rows(examples, ", ".join(part.name for part in parts), locate, kind, " + ".join(formats_))
    rows.skipped = [m for part in parts for m in part.skipped]
    return rows


def _pairs(source, format) -> bool:
    """Whether KTO rows are to come from preference pairs: a preference format, or (auto) a first row
    with 'chosen' and 'rejected' and no 'label'."""
    if format in ("preference", "preference_implicit"):
        return True
    if format != "auto":
        return False
    try:
        first = source[0]
    except DataError:
        return False
    return isinstance(first, dict) and {"chosen", "rejected"} <= set(first) and "label" not in first


def unpair(pairs: Rows) -> Rows:
    """Preference rows -> KTO rows (TRL's `unpair_preference_dataset`): each pair's chosen completion with
    label True and its rejected one with label False, in that order; each names its pair's line."""
    examples = []
    for ex in pairs.rows:
        for side, label in (("chosen", True), ("rejected", False)):
            examples.append({"prompt": ex["prompt"], "completion": ex[side], "label": label})

    def locate(j: int) -> str:
        return f"{pairs.locate(j // 2)} ({'chosen' if j % 2 == 0 else 'rejected'})"

    rows = Rows(examples, pairs.name, locate, "kto", f"{pairs.format} (unpaired)")
    rows.skipped = pairs.skipped
    return rows


def set_chat_template(tokenizer, chat_template: str) -> None:
    """Gives `tokenizer` the Jinja chat template `chat_template`: a file path or the template text."""
    if not chat_template:
        return
    if "{" not in chat_template:  # a path, not a template
        if not os.path.isfile(chat_template):
            raise ConfigError(
                f"config.data.chat_template={chat_template!r}: no such file; expected a Jinja "
                "template file or the template text"
            )
        with open(chat_template, encoding="utf-8") as f:
            chat_template = f.read()
    tokenizer.chat_template = chat_template


def load(
    path: Any,
    *,
    kind: str,
    tokenizer,
    max_length: int,
    format: str = "auto",
    split: str = "train",
    max_prompt_length: int | None = None,
    assistant_only_loss: bool = True,
    packing: bool = False,
    whole_sequences: bool = False,
    chat_template: str = "",
    data_dir: str | None = None,
    lazy: bool | None = None,
    skip_bad_rows: int = 0,
) -> pipeline.TokenizedDataset:
    """Reads, checks, tokenizes and pads a dataset: the one entry point the trainers use.

    Args:
      path: anything `read` takes, or the `Rows` it returned (not read again).
      kind: "clm" | "sft" | "preference" | "kto" | "prompt" (which the objective decides: sft -> sft,
        reward/dpo/orpo/simpo -> preference, kto -> kto, ppo/grpo -> prompt, pretraining -> clm).
      tokenizer: a transformers tokenizer; conversational rows need its chat template (or `chat_template`).
      max_length: T, tokens per sequence (prompt + completion) and the batch width.
      format: "auto" or a format name from `formats.FORMATS`.
      split: which split of a directory / hub / TFDS dataset.
      max_prompt_length: prompt tokens kept (from the left of the completion); required for kind="prompt".
      assistant_only_loss: SFT trains on assistant turns and completions only (False: everything).
      packing: pack clm rows / make sft, preference and kto batches padding-free (see `pipeline`).
      whole_sequences: padding-free rows of whole sequences (reward models).
      chat_template: a Jinja chat template (file path or text) that replaces the tokenizer's.
      data_dir: TFDS data directory.
      skip_bad_rows: see `read`.
      lazy: tokenize each batch's examples when the batch is made instead of all up front (True), up
        front (False), or lazily for sft/preference/kto data of at least `pipeline.LAZY_MIN_ROWS` rows
        (None; the trainers' `data.tokenize=auto`).

    Returns:
      a `pipeline.TokenizedDataset` for `pipeline.BatchIterator`; ``num_truncated`` counts the examples
      that lost tokens to `max_length` / `max_prompt_length`.

    Raises:
      DataError: a bad file or row (see `read`), or a conversation the chat template cannot render.
    """
    rows = read(path, kind=kind, format=format, split=split, data_dir=data_dir, skip_bad_rows=skip_bad_rows)
    set_chat_template(tokenizer, chat_template)
    return pipeline.build_dataset(
        rows,
        kind=kind,
        tokenizer=tokenizer,
        split=split,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        assistant_only_loss=assistant_only_loss,
        packing=packing,
        whole_sequences=whole_sequences,
        lazy=lazy,
    )
