"""Reference log-probs computed once and kept on disk, for `precompute_ref` (DPO, KTO).

  key = sha256(the dataset's tokens, the reference checkpoint, the log-prob settings)
  <cache_dir>/<key>.safetensors = {"ref_chosen_logps": [N], "ref_rejected_logps": [N]} (or "ref_logps")

The key covers everything the numbers depend on: the token ids, targets, masks, positions and segment
ids of every example (so the data file, the tokenizer, the chat template and the truncation settings are
all in it; a lazily tokenized dataset hashes its checked rows, the tokenizer and those settings instead), the reference checkpoint (its config.json, and for each safetensors file its size and a hash
of its first and last MiB, which hold the header and the tensor bytes at both ends), the compute dtypes,
and whether the loss reads length-averaged log-probs (IPO). A later run, another epoch, or a rerun with
other hyper-parameters (beta, learning rate, steps) finds the file and skips the pass.

A file is used only if it loads, its metadata names the same key and number of examples, its arrays hash
to the checksum stored with them, and every value is finite; otherwise it is rebuilt. Files are written
by process 0 through a temporary name and `os.replace`, so a crash never leaves a half-written file
under the final name. With several hosts the cache is used only if every host finds a good file (they
agree through an all-gather), so no host skips the collective pass while another runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

_MIB = 1 << 20


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_MIB))
        if size > _MIB:
            f.seek(max(size - _MIB, _MIB))
            h.update(f.read(_MIB))
    return h.hexdigest()


def checkpoint_identity(m: Any, seed: int) -> dict:
    """What identifies the reference weights (`m` = `config.model`): the checkpoint's files, or the random
    init and seed."""
    if m.path and os.path.isdir(os.path.expanduser(m.path)):
        root = os.path.expanduser(m.path)
        files = sorted(f for f in os.listdir(root) if f.endswith(".safetensors") or f == "config.json")
        return {"files": {f: _file_digest(os.path.join(root, f)) for f in files}}
    if m.path:  # a hub name: its resolved revision is not known here
        return {"hub": m.path}
    return {"init": m.init.to_dict(), "seed": seed}


def fingerprint(dataset, reference: dict, settings: dict) -> str:
    """The cache key of `dataset`'s reference log-probs (see module docstring)."""
    h = hashlib.sha256(dataset.content_digest())
    h.update(json.dumps({"reference": reference, "settings": settings}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k], np.float32)
        h.update(f"{k}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def path_of(cache_dir: str, key: str) -> str:
    return os.path.join(os.path.expanduser(cache_dir), f"{key}.safetensors")


def load(cache_dir: str, key: str, num_examples: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when missing, unreadable, stale or corrupt."""
    path = path_of(cache_dir, key)
    if not os.path.exists(path):
        return None
    try:
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # truncated / not a safetensors file
        return None
    ok = (
        meta.get("key") == key
        and meta.get("num_examples") == str(num_examples)
        and arrays
        and all(a.shape == (num_examples,) and np.all(np.isfinite(a)) for a in arrays.values())
        and meta.get("checksum") == _checksum(arrays)
    )
    return arrays if ok else None


def save(cache_dir: str, key: str, arrays: dict[str, np.ndarray]) -> str:
    """Writes the arrays atomically; returns the path."""
    from safetensors.numpy import save_file

    path = path_of(cache_dir, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
    n = len(next(iter(arrays.values())))
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(arrays, tmp, metadata={"key": key, "num_examples": str(n), "checksum": _checksum(arrays)})
    os.replace(tmp, path)
    return path
