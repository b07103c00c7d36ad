"""Where rows come from: local json/jsonl/parquet files or directories, the HF hub, TFDS, or memory.

`load_rows(source, split)` returns a `RowSource`: random access to plain-dict rows plus `locate(i)`, which
names the file and place a row came from, so that a format error can say
``"data/train.jsonl line 17: 'chosen' is missing"``.

Places are 1-based everywhere: ``line N`` in a ``.jsonl`` file (blank lines are skipped but counted, so N
is the line an editor shows), ``item N`` in a ``.json`` array, ``row N`` in a parquet file, a hub or TFDS
split or an in-memory list.

Sources:
  * a ``.jsonl`` / ``.json`` / ``.parquet`` file, or a list of them. JSON files are parsed here (not by
    ``datasets``) so that every problem names its line: invalid JSON, invalid UTF-8, a line that is not a
    JSON object, an empty file. A ``.json`` file holds an array of objects, or JSON Lines (as ``datasets``
    reads them). Parquet is read with pyarrow.
  * a directory: its supported files for `split` - names like ``train.jsonl``, ``sft_train.jsonl``,
    ``train-00000-of-00002.parquet`` or files under a ``train/`` sub-directory; with no such match, every
    supported file in it (sorted).
  * ``"tfds:NAME[/CONFIG][:VERSION]"``: ``tensorflow_datasets.data_source`` (array_record, no TensorFlow);
    bytes are decoded to str. Optional: imported only when used. ``data_dir`` selects the TFDS directory.
  * any other string: a dataset name on the HF hub (``datasets.load_dataset(name, split=split)``).
  * a list of dicts, or a ``datasets.Dataset``: used as they are (tests, programmatic use).

Every problem with the data itself raises `jaxalign.errors.DataError` naming the file (and line).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from jaxalign.errors import DataError

SUPPORTED = (".jsonl", ".json", ".parquet")


@dataclasses.dataclass
class RowSource:
    """Random access to rows as dicts, and where each row came from.

    Attributes:
      rows: a sequence of dict rows (list, ``datasets.Dataset`` or a TFDS data source).
      name: a short description for messages.
      locate: index -> ``"file line N"`` / ``"file item N"`` / ``"file row N"`` / ``"row N"`` (1-based).
    """

    rows: Sequence[Any]
    name: str
    locate: Callable[[int], str]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        try:
            return _plain(self.rows[i])
        except UnicodeError as e:  # text a tokenizer cannot take: one line naming the row
            bad = e.object[e.start : e.start + 1]
            code = f"0x{bad[0]:02x}" if isinstance(bad, bytes) else f"U+{ord(bad):04X}"
            what = (
                "bytes that are not UTF-8" if isinstance(e, UnicodeDecodeError) else "a lone UTF-16 surrogate"
            )
            raise DataError(
                f"{self.locate(i)}: a text field holds {what} ({code}); expected valid Unicode text"
            ) from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _plain(row: Any) -> dict:
    """Decodes bytes (TFDS, binary parquet columns) to str, recursively; UnicodeError for bytes that are not
    UTF-8 and for strings with lone surrogates (JSON's "\\ud800" escapes: no tokenizer takes them)."""
    if isinstance(row, bytes):
        return row.decode("utf-8")
    if isinstance(row, str):
        if _SURROGATE.search(row):
            row.encode("utf-8")  # raises UnicodeEncodeError at the surrogate
        return row
    if isinstance(row, dict):
        return {k: _plain(v) for k, v in row.items()}
    if isinstance(row, (list, tuple)):
        return [_plain(v) for v in row]
    if hasattr(row, "tolist") and getattr(row, "dtype", None) is not None and row.dtype.kind in "OS":
        return _plain(row.tolist())
    return row


def _type_name(x: Any) -> str:
    """How a JSON value is called in messages."""
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(x), type(x).__name__)


def _hidden(path: Path, directory: Path) -> bool:
    """Under a hidden or private folder, or hidden itself (``.ipynb_checkpoints``, ``.git``, ``.cache``,
    ``__pycache__``): not data, as for `datasets`."""
    return any(part.startswith((".", "__")) for part in path.relative_to(directory).parts)


def _split_files(directory: Path, split: str) -> list[Path]:
    files = sorted(
        p for p in directory.rglob("*") if p.suffix in SUPPORTED and p.is_file() and not _hidden(p, directory)
    )
    if not files:
        raise DataError(f"{directory}: no .jsonl, .json or .parquet files in this directory")

    def matches(p: Path) -> bool:
        stem = p.name.split(".")[0]
        return (
            stem == split
            or stem.endswith((f"_{split}", f"-{split}"))
            or stem.startswith((f"{split}_", f"{split}-"))
            or split in p.relative_to(directory).parts[:-1]
        )

    chosen = [p for p in files if matches(p)]
    if chosen:
        return chosen
    if split == "train":
        return files
    raise DataError(f"{directory}: no files for split {split!r} among {[p.name for p in files]}")


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a BOM is dropped); bad bytes are reported by line and column."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path} line {line}: invalid UTF-8 (byte 0x{data[e.start]:02x} at column {column}); "
            "expected UTF-8 text (re-save the file as UTF-8)"
        ) from None


def _json_why(e: json.JSONDecodeError) -> str:
    """``"Expecting value at column 15"`` from the decoder's error."""
    msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg
    return f"{msg} at column {e.colno}"


def _no_rows(path: Path, text: str) -> DataError:
    why = "the file is empty" if not text else "only blank lines" if not text.strip() else "an empty array"
    return DataError(f"{path}: no rows ({why}); expected at least one JSON object")


def _parse_jsonl(path: Path, text: str) -> tuple[list[dict], list[int]]:
    """Rows and their 1-based line numbers; blank lines are skipped."""
    rows, lines = [], []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            hint = (
                "; this looks like a JSON array: name the file .json"
                if not rows and line.strip() == "["
                else ""
            )
            raise DataError(
                f"{path} line {n}: invalid JSON ({_json_why(e)}); expected one JSON object per line{hint}"
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                f"{path} line {n}: expected a JSON object {{...}} per line, got {_type_name(row)}"
            )
        rows.append(row)
        lines.append(n)
    if not rows:
        raise _no_rows(path, text)
    return rows, lines


def _parse_json_array(path: Path, text: str) -> list[dict]:
    """A JSON array of objects; its items are numbered from 1."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path} line {e.lineno}: invalid JSON ({_json_why(e)}); expected an array of JSON objects"
        ) from None
    if not items:
        raise _no_rows(path, text)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{path} item {i + 1}: expected a JSON object {{...}}, got {_type_name(item)}")
    return items


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow
    import pyarrow.parquet as pq

    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        rows = pq.read_table(str(path)).to_pylist()
    except (pyarrow.ArrowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable parquet file ({first})") from None
    if not rows:
        raise DataError(f"{path}: no rows (an empty parquet table)")
    return rows


def _read_file(path: Path) -> tuple[list[dict], Callable[[int], str]]:
    """One file's rows and its ``locate``."""
    if path.suffix == ".parquet":
        return _read_parquet(path), lambda i: f"{path} row {i + 1}"
    text = _read_text(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return _parse_json_array(path, text), lambda i: f"{path} item {i + 1}"
    rows, lines = _parse_jsonl(path, text)  # .jsonl, or JSON Lines in a .json file
    return rows, lambda i: f"{path} line {lines[i]}"


def _load_files(files: list[Path]) -> RowSource:
    rows, offsets, locates = [], [], []
    for path in files:
        part, locate = _read_file(path)
        offsets.append(len(rows))
        locates.append(locate)
        rows.extend(part)

    def locate(i: int) -> str:
        k = bisect.bisect_right(offsets, i) - 1
        return locates[k](i - offsets[k])

    name = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
    return RowSource(rows, name, locate)


def _load_tfds(spec: str, split: str, data_dir: str | None) -> RowSource:
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # optional dependency
        raise DataError(f"{spec}: tfds: sources need `pip install tensorflow-datasets`") from None
    name = spec[len("tfds:") :]
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - not built, no such split, unknown name: the user's to fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{spec}: cannot open split {split!r} ({type(e).__name__}: {first})") from None
    return RowSource(source, f"tfds {name} [{split}]", lambda i: f"tfds {name}[{split}] row {i + 1}")


def _load_hub(spec: str, split: str) -> RowSource:
    from jaxalign.checkpoints.tokenizer import hub_unreachable

    why = hub_unreachable()
    if why:  # the local cache only: one line at once instead of minutes of retries
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets

    try:
        rows = datasets.load_dataset(spec, split=split)
    except Exception as e:  # noqa: BLE001 - not found, offline, no such split: all the user's to fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hub = (
            f"the hub cannot be reached ({why}) and it is not in the local cache"
            if why
            else f"loading it from the Hugging Face hub failed ({first})"
        )
        raise DataError(
            f"{spec}: not a local file or directory, and {hub}; expected a .jsonl/.json/.parquet file, a "
            "directory of them, or a hub dataset name"
        ) from None
    return RowSource(rows, f"{spec} [{split}]", lambda i: f"{spec}[{split}] row {i + 1}")


def load_rows(source: Any, split: str = "train", *, data_dir: str | None = None) -> RowSource:
    """Opens `source` (see the module docstring) for `split`."""
    if isinstance(source, RowSource):
        return source
    if isinstance(source, (list, tuple)) and (not source or isinstance(source[0], dict)):
        return RowSource(list(source), "rows", lambda i: f"row {i + 1}")
    if isinstance(source, (list, tuple)):
        return _load_files([Path(p) for p in source])
    if not isinstance(source, (str, os.PathLike)):  # a datasets.Dataset or similar sequence of dicts
        return RowSource(source, "dataset", lambda i: f"row {i + 1}")
    spec = str(source)
    if spec.startswith("tfds:"):
        return _load_tfds(spec, split, data_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_files(_split_files(path, split))
    if path.suffix in SUPPORTED:
        return _load_files([path])
    if path.exists():
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; expected .jsonl, "
            ".json or .parquet"
        )
    return _load_hub(spec, split)
