"""What a config's data becomes, before anything trains.

    python -m jaxalign.data.inspect --config=configs/sft.py [--config.data.train=my.jsonl]

Prints, for ``data.train`` (and ``data.eval`` when set): where the rows come from, how many, the format
``format=auto`` detected, the first example as the model sees it with its loss mask (trained tokens
between ``«`` and ``»``; everything else is context), token-length statistics (min / median / p95 / max,
before truncation) and how many examples ``data.max_length`` / ``data.max_prompt_length`` truncate. Bad
data ends like the trainer: ``error: <file> line <N>: ...`` and exit code 2.
"""

import sys


import numpy as np
from absl import flags
from ml_collections import config_flags

from jaxalign.data import loading, templates

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with get_config().", lock_config=True)


def marked(tokenizer, ids, trained) -> str:
    """The tokens `ids` decoded, each run of trained tokens between « and »."""
    out, start = [], 0
    for j in range(1, len(ids) + 1):
        if j == len(ids) or trained[j] != trained[start]:
            text = tokenizer.decode(list(ids[start:j]), skip_special_tokens=False)
            out.append(f"«{text}»" if trained[start] else text)
            start = j
    return "".join(out)


def example_views(tokenizer, ds, i: int = 0) -> list[tuple[str, str]]:
    """[(label, marked text)] for example `i` of a tokenized dataset (one per sequence)."""
    a = ds.arrays
    if ds.kind == "prompt":
        ids = a["prompt_ids"][i][a["prompt_segment_ids"][i] > 0]
        return [("prompt", marked(tokenizer, ids.tolist(), [0] * len(ids)))]
    views = []
    for prefix in ds.sequence_prefixes:
        seg = a[prefix + "segment_ids"][i]
        keep = seg == seg[0]  # the first sequence of a (packed) row
        ids = [int(a[prefix + "input_ids"][i][0])] + a[prefix + "targets"][i][keep].tolist()
        trained = [0] + (a[prefix + "loss_mask"][i][keep] > 0).astype(int).tolist()
        views.append((prefix.rstrip("_") or "sequence", marked(tokenizer, ids, trained)))
    return views


def raw_lengths(tokenizer, rows, assistant_only_loss: bool = True) -> dict[str, np.ndarray]:
    """Untruncated token counts per example: "total" (prompt + completion, the longer of a pair) and,
    where there is one, "prompt"."""
    total, prompt = [], []
    for ex in rows.rows:
        if rows.kind == "prompt":
            total.append(len(templates.encode_prompt(tokenizer, ex["prompt"])))
        elif "text" in ex or "messages" in ex:
            total.append(len(templates.encode_example(tokenizer, ex, assistant_only_loss)[0]))
        else:
            fields = [f for f in ("completion", "chosen", "rejected") if f in ex]
            sizes = [templates.encode_prompt_completion(tokenizer, ex["prompt"], ex[f]) for f in fields]
            prompt.append(len(sizes[0][0]))
            total.append(max(len(p) + len(c) for p, c, _ in sizes))
    out = {"total": np.asarray(total)}
    if prompt:
        out["prompt"] = np.asarray(prompt)
    return out


def data_paths(spec: str):
    """`data.train` / `data.eval`: one path or hub name, or comma-separated files (as the trainers)."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else parts


def stats(x: np.ndarray) -> str:
    return f"min {x.min()}, median {int(np.median(x))}, p95 {int(np.percentile(x, 95))}, max {x.max()} tokens"


def report(config, which: str = "train", out=sys.stdout) -> None:
    """Prints the inspection of ``config.data.<which>`` (see the module docstring)."""
    from jaxalign import checkpoints

    d, m = config.data, config.model
    from jaxalign import registry

    with_data = [n for n, o in registry.OBJECTIVES.items() if o.data]
    if config.objective not in with_data:
        from jaxalign.errors import ConfigError

        raise ConfigError(
            f"config.objective={config.objective!r}: has no training data to inspect; expected "
            f"one of {sorted(with_data)}"
        )
    kind = registry.get(config.objective).data
    rows = loading.read(data_paths(d[which]), kind=kind, format=d.format, split=which)
    tokenizer = checkpoints.load_tokenizer(m.tokenizer or m.path, trust_remote_code=m.trust_remote_code)
    loading.set_chat_template(tokenizer, d.chat_template)
    ds = loading.load(
        rows,
        kind=kind,
        tokenizer=tokenizer,
        max_length=d.max_length,
        max_prompt_length=d.max_prompt_length,
        assistant_only_loss=d.assistant_only_loss,
    )
    lengths = raw_lengths(tokenizer, rows, d.assistant_only_loss)
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"data.{which}: {rows.name}")
    p(
        f"  {len(rows)} rows, format {rows.format!r} (data.format={d.format!r}), kind {kind!r} "
        f"(objective {config.objective!r})"
    )
    p(f"  example 1 ({rows.locate(0)}), «trained tokens» (loss mask 1), the rest context:")
    for label, text in example_views(tokenizer, ds, 0):
        p(f"    {label}: {text!r}")
    for name, x in lengths.items():
        p(f"  {name} length: {stats(x)}")
    limit = d.max_prompt_length if kind == "prompt" else d.max_length
    p(
        f"  truncated: {ds.num_truncated} of {len(rows)} examples "
        f"(data.max_length={d.max_length}, data.max_prompt_length={d.max_prompt_length}; "
        f"{int((lengths['total'] > limit).sum())} exceed {'max_prompt_length' if kind == 'prompt' else 'max_length'})"
    )


def main(argv):
    if len(argv) > 1:
        from absl import app

        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    report(config, "train")
    if config.data.eval:
        report(config, "eval")


if __name__ == "__main__":
    from jaxalign.errors import run_main

    flags.mark_flags_as_required(["config"])
    run_main(main)
