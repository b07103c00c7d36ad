"""Where rows come from: local json/jsonl/parquet files or directories, the HF hub, TFDS, or memory.

`load_rows(source, split)` returns a `RowSource`: random access to plain-dict rows plus `locate(i)`, which
names the file and line (or row) a row came from, so that a format error can say
``"train.jsonl line 17: 'chosen' is missing"``.

Sources:
  * a ``.jsonl`` / ``.json`` / ``.parquet`` file, or a list of them: loaded with HF ``datasets`` one file
    at a time (so each row's file is known). For jsonl, ``line = index in file + 1`` (blank lines are not
    expected); for json arrays and parquet the message says ``row N`` (0-based).
  * a directory: its supported files for `split` - names like ``train.jsonl``, ``sft_train.jsonl``,
    ``train-00000-of-00002.parquet`` or files under a ``train/`` sub-directory; with no such match, every
    supported file in it (sorted).
  * ``"tfds:NAME[/CONFIG][:VERSION]"``: ``tensorflow_datasets.data_source`` (array_record, no TensorFlow);
    bytes are decoded to str. Optional: imported only when used. ``data_dir`` selects the TFDS directory.
  * any other string: a dataset name on the HF hub (``datasets.load_dataset(name, split=split)``).
  * a list of dicts, or a ``datasets.Dataset``: used as they are (tests, programmatic use).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

SUPPORTED = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclasses.dataclass
class RowSource:
    """Random access to rows as dicts, and where each row came from.

    Attributes:
      rows: a sequence of dict rows (list, ``datasets.Dataset`` or a TFDS data source).
      name: a short description for messages.
      locate: index -> ``"file line N"`` / ``"file row N"`` / ``"row N"``.
    """

    rows: Sequence[Any]
    name: str
    locate: Callable[[int], str]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return _plain(self.rows[i])


def _plain(row: Any) -> dict:
    """Decodes bytes (TFDS) to str, recursively."""
    if isinstance(row, bytes):
        return row.decode("utf-8")
    if isinstance(row, dict):
        return {k: _plain(v) for k, v in row.items()}
    if isinstance(row, (list, tuple)):
        return [_plain(v) for v in row]
    if hasattr(row, "tolist") and getattr(row, "dtype", None) is not None and row.dtype.kind in "OS":
        return _plain(row.tolist())
    return row


def _split_files(directory: Path, split: str) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if p.suffix in SUPPORTED and p.is_file())
    if not files:
        raise FileNotFoundError(f"{directory}: no .jsonl, .json or .parquet files")

    def matches(p: Path) -> bool:
        stem = p.name.split(".")[0]
        return (stem == split or stem.endswith((f"_{split}", f"-{split}"))
                or stem.startswith((f"{split}_", f"{split}-")) or split in p.relative_to(directory).parts[:-1])

    chosen = [p for p in files if matches(p)]
    if chosen:
        return chosen
    if split == "train":
        return files
    raise FileNotFoundError(f"{directory}: no files for split {split!r} among {[p.name for p in files]}")


def _load_files(files: list[Path]) -> RowSource:
    import datasets

    parts, offsets, names = [], [], []
    total = 0
    for path in files:
        ds = datasets.load_dataset(SUPPORTED[path.suffix], data_files=str(path), split="train")
        parts.append(ds)
        offsets.append(total)
        names.append(path)
        total += len(ds)
    rows = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)

    def locate(i: int) -> str:
        k = max(j for j, off in enumerate(offsets) if off <= i)
        local = i - offsets[k]
        path = names[k]
        where = f"line {local + 1}" if path.suffix == ".jsonl" else f"row {local}"
        return f"{path.name} {where}"

    name = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
    return RowSource(rows, name, locate)


def _load_tfds(spec: str, split: str, data_dir: str | None) -> RowSource:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # optional dependency
        raise ImportError("tfds: sources need `pip install tensorflow-datasets` (jaxalign[tfds])") from e
    name = spec[len("tfds:"):]
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    return RowSource(source, f"tfds {name} [{split}]", lambda i: f"tfds {name}[{split}] row {i}")


def load_rows(source: Any, split: str = "train", *, data_dir: str | None = None) -> RowSource:
    """Opens `source` (see the module docstring) for `split`."""
    if isinstance(source, RowSource):
        return source
    if isinstance(source, (list, tuple)) and (not source or isinstance(source[0], dict)):
        return RowSource(list(source), "rows", lambda i: f"row {i}")
    if isinstance(source, (list, tuple)):
        return _load_files([Path(p) for p in source])
    if not isinstance(source, (str, os.PathLike)):  # a datasets.Dataset or similar sequence of dicts
        return RowSource(source, "dataset", lambda i: f"row {i}")
    spec = str(source)
    if spec.startswith("tfds:"):
        return _load_tfds(spec, split, data_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_files(_split_files(path, split))
    if path.suffix in SUPPORTED:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        return _load_files([path])
    if path.exists():
        raise ValueError(f"{path}: unsupported file type (use .jsonl, .json or .parquet)")
    import datasets  # a hub dataset name

    rows = datasets.load_dataset(spec, split=split)
    return RowSource(rows, f"{spec} [{split}]", lambda i: f"{spec}[{split}] row {i}")
