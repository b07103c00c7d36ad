"""What a checkpoint belongs to: the run identity saved with every checkpoint and compared before a resume.

A workdir's checkpoints restore only into the run that wrote them. Resuming another objective, another model
size or dtype, another tokenizer, other training data or another adapter kind would restore parameters and
optimiser moments that do not belong to this config, or fail deep inside the data iterator. So every
checkpoint's metadata holds `identity(config, run)`, and `check(saved, now, where)` raises one line naming
the first field that differs before anything is restored. `train.resume`: "auto" (resume when there is a
checkpoint), "never" (refuse a workdir that has one), "must" (refuse one that has none).
"""

from __future__ import annotations

import hashlib
import json

from jaxalign.errors import CheckpointError, ConfigError
from jaxalign.lora import kinds

RESUME_MODES = ("auto", "never", "must")
_SAMPLED = 256  # examples hashed for the data fingerprint (evenly spaced; all of a smaller set)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dataset(batches):
    """The training rows behind a batch source: the offline iterator's data set, or RL's prompts."""
    it = getattr(batches, "iterator", None) or getattr(batches, "prompts", None)
    return getattr(it, "dataset", None)


def data_fingerprint(dataset) -> dict:
    """Rows and a digest of up to _SAMPLED evenly spaced tokenized examples (cheap for any size)."""
    n = len(dataset)
    idx = sorted({int(i * n / _SAMPLED) for i in range(min(n, _SAMPLED))})
    batch = dataset.take(idx)
    h = hashlib.sha256()
    for k in sorted(batch):
        v = batch[k]
        h.update(k.encode())
        h.update(v.tobytes() if hasattr(v, "tobytes") else json.dumps(v, default=str).encode())
    return {"rows": n, "digest": h.hexdigest()[:16]}


def identity(config, run) -> dict:
    """The run's identity (JSON): objective, model shapes and dtypes, tokenizer, data, adapters."""
    m = run.model_config
    tok = run.tokenizer
    ds = _dataset(run.batches)
    kind = kinds.kind_of(config) or "none"
    return {
        "objective": config.objective,
        "model": {
            k: getattr(m, k, None)
            for k in (
                "vocab_size",
                "hidden_size",
                "num_layers",
                "num_heads",
                "num_kv_heads",
                "head_dim",
                "intermediate_size",
                "param_dtype",
            )
        },
        "tokenizer": _digest([sorted(tok.get_vocab().items()), getattr(tok, "chat_template", None)]),
        "data": data_fingerprint(ds) if ds is not None else None,
        "adapters": kind + (f" r={config.lora.rank}" if kind == "lora" else ""),
    }


WHAT = {
    "objective": "objective",
    "model": "model shapes or dtype",
    "tokenizer": "tokenizer (vocabulary or chat template)",
    "data": "training data",
    "adapters": "adapters",
}


def check(saved, now, where):
    """Raises CheckpointError naming the first field of `now` that differs from the checkpoint's `saved`
    (a checkpoint without an identity, from before it was recorded, is let through)."""
    if not saved:
        return
    for key, what in WHAT.items():
        a, b = saved.get(key), now.get(key)
        if a is None or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diff = next((k for k in a if a.get(k) != b.get(k)), None)
            detail = f"{diff}: {a.get(diff)} there, {b.get(diff)} here" if diff else f"{a} there, {b} here"
        else:
            detail = f"{a!r} there, {b!r} here"
        raise CheckpointError(
            f"{where}: written by another run: its {what} differs ({detail}); use another --workdir, or "
            "delete its checkpoints to start over"
        )


def check_resume_mode(config, latest_checkpoint):
    """`train.resume` against whether the workdir has a checkpoint (None: it has none)."""
    mode = config.train.get("resume", "auto")
    if mode == "never" and latest_checkpoint:
        raise ConfigError(
            f"config.train.resume='never': {latest_checkpoint} exists; use another --workdir (or resume='auto')"
        )
    if mode == "must" and not latest_checkpoint:
        raise ConfigError("config.train.resume='must': the workdir has no checkpoint to resume from")
