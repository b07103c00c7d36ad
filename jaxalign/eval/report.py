"""Evaluation results to files: eval.json, eval.md (Markdown tables + plots + examples),
completions.jsonl, eval_*.png; and `compare` for several checkpoints side by side.

Plots need matplotlib (`pip install matplotlib`); without it the rest is written and eval.md says why
there are no plots.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

# How each metric is printed: rates and diversity with 3 decimals, log-ratios with 4.
_FORMATS = {
    "num_prompts": "{:d}",
    "length/mean": "{:.1f}",
    "kl/sequence": "{:.4f}",
    "kl/per_token": "{:.4f}",
    "reward/mean": "{:.3f}",
    "reward/reference_mean": "{:.3f}",
}
_RATE_PLOTS = (
    "accuracy",
    "stop_rate",
    "win_rate",
    "refusal/rate",
    "refusal/complete_rate",
    "refusal/over_rate",
    "text/fragment_rate",
)
PLOTS_MISSING = "plots skipped: matplotlib is not installed (pip install matplotlib)"


def fmt(metric: str, value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and metric == "num_prompts":
        value = int(value)
    return _FORMATS.get(metric, "{:.3f}").format(value)


def _metric_names(sets: Mapping[str, Mapping]) -> list[str]:
    names = []
    for m in sets.values():
        names += [k for k in m if k not in names]
    return names


def sets_table(results: Mapping) -> str:
    """One checkpoint: a row per metric, a column per prompt set; the perplexity below it."""
    sets = results["sets"]
    lines = ["| metric | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
    for metric in _metric_names(sets):
        lines.append(f"| {metric} | " + " | ".join(fmt(metric, s.get(metric)) for s in sets.values()) + " |")
    ppl = results.get("perplexity")
    if ppl:
        lines.append(
            f"\nperplexity on `{ppl['text_path']}`: **{ppl['perplexity']:.3f}** "
            f"(NLL {ppl['nll']:.4f} nats/token over {ppl['num_tokens']} tokens)"
        )
    return "\n".join(lines)


def compare(results_by_name: Mapping[str, Mapping], metrics: Sequence[str] | None = None) -> str:
    """Several evaluations side by side: a Markdown table with a row per (prompt set, metric) and a
    column per name; `perplexity` last. `metrics` picks and orders the metrics (default: all)."""
    names = list(results_by_name)
    set_names = []
    for r in results_by_name.values():
        set_names += [s for s in r["sets"] if s not in set_names]
    lines = ["| set | metric | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for s in set_names:
        per = [r["sets"].get(s, {}) for r in results_by_name.values()]
        for metric in metrics or _metric_names({i: p for i, p in enumerate(per)}):
            if all(p.get(metric) is None for p in per):
                continue
            lines.append(f"| {s} | {metric} | " + " | ".join(fmt(metric, p.get(metric)) for p in per) + " |")
    ppl = [(r.get("perplexity") or {}).get("perplexity") for r in results_by_name.values()]
    if any(p is not None for p in ppl):
        lines.append("| text | perplexity | " + " | ".join(fmt("perplexity", p) for p in ppl) + " |")
    return "\n".join(lines)


def summary_table(results: Mapping) -> str:
    """The console summary: where the files are and the per-set table."""
    return f"Evaluated {results['checkpoint']} in {results['wall_s']:.1f}s\n" + sets_table(results)


def to_markdown(
    results: Mapping,
    examples: Mapping[str, Sequence[Mapping]] | None = None,
    plot_files: Sequence[str] = (),
    plot_note: str = "",
    num_examples: int = 5,
) -> str:
    s = results["settings"]
    decoding = (
        "greedy"
        if s["temperature"] == 0
        else f"temperature {s['temperature']}, top_k {s['top_k']}, top_p {s['top_p']}"
    )
    out = [
        f"# Evaluation of `{results['checkpoint']}`",
        "",
        f"- reference: `{results['reference']}`"
        if results["reference"]
        else "- reference: none (no KL, no win rate)",
        f"- reward model: `{results['reward_model']}`"
        if results["reward_model"]
        else "- reward model: none (no reward, no win rate)",
        f"- decoding: {decoding}, at most {s['max_new_tokens']} new tokens, prompts cut to their last "
        f"{s['max_prompt_length']} tokens, batches of {s['batch_size']}",
        f"- answer check: `{s['check_fn']}`",
        f"- wall time: {results['wall_s']:.1f}s",
        "",
        "## Metrics",
        "",
        sets_table(results),
        "",
        "accuracy: the checkable answer is right (rows with an answer). stop_rate: ends with EOS within the "
        "budget and never starts a user turn; truncation_rate: no EOS within the budget. length: generated "
        "tokens (EOS included). distinct/n: distinct word n-grams over all answers / all n-grams. "
        "kl: sum over the policy's answer tokens of log π − log π_ref (sequence mean; and per token). "
        "win_rate: the reward model scores the policy's answer above the reference's (ties ½). "
        "refusal/rate: refusals on must-refuse rows; refusal/complete_rate: of those, refusals that stop "
        "with a whole first sentence and are no fragment; refusal/over_rate: refusals on benign rows. "
        "text/fragment_rate: answers that stop within two tokens or repeat themselves.",
        "",
    ]
    if plot_files or plot_note:
        out += ["## Plots", ""]
        out += [f"![{os.path.splitext(p)[0]}]({p})" for p in plot_files]
        if plot_note:
            out.append(f"_{plot_note}_")
        out.append("")
    if examples and num_examples:
        out += ["## Examples", ""]
        for name, recs in examples.items():
            out += [
                f"### {name}",
                "",
                "| prompt | answer | completion | correct | stopped |",
                "|---|---|---|---|---|",
            ]
            for r in recs[:num_examples]:
                out.append(
                    f"| {_cell(_prompt_text(r['prompt']))} | {_cell(r['answer'] or '')} | "
                    f"{_cell(r['completion'])} | {'–' if r['correct'] is None else r['correct']} | "
                    f"{r['stopped']} |"
                )
            out.append("")
    return "\n".join(out)


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return " / ".join(f"{m['role']}: {m['content']}" for m in prompt or [])


def _cell(text: str) -> str:
    return "`" + str(text).replace("|", "\\|").replace("\n", "⏎").replace("`", "'") + "`"


def write_plots(
    results: Mapping, examples: Mapping[str, Sequence[Mapping]], workdir: str
) -> tuple[list[str], str]:
    """PNG plots into `workdir`. Returns (file names, a note: why some are missing, or "")."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no display backend
    except ImportError:
        return [], PLOTS_MISSING
    files = []
    sets = results["sets"]

    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(sets), 1)
    for j, (name, m) in enumerate(sets.items()):
        xs = [i + j * width for i in range(len(_RATE_PLOTS))]
        ax.bar(xs, [float("nan") if m.get(k) is None else m[k] for k in _RATE_PLOTS], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(_RATE_PLOTS))], _RATE_PLOTS, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate")
    ax.set_title("rates per prompt set (no bar: does not apply)")
    fig.legend(loc="outside lower center", ncols=max(len(sets), 1), fontsize=8)
    files.append(_save(fig, workdir, "eval_rates.png"))

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for name, recs in examples.items():
        ax.hist([r["length"] for r in recs], bins=20, alpha=0.5, label=name)
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("answers")
    ax.set_title("response length")
    ax.legend(fontsize=8)
    files.append(_save(fig, workdir, "eval_lengths.png"))

    recs = [r for rs in examples.values() for r in rs]
    if recs and "reward" in recs[0]:
        fig = Figure(figsize=(6, 3.5), layout="constrained")
        ax = fig.add_subplot()
        ax.hist([r["reward"] for r in recs], bins=30, alpha=0.5, label="policy")
        if "reference_reward" in recs[0]:
            ax.hist([r["reference_reward"] for r in recs], bins=30, alpha=0.5, label="reference")
        ax.set_xlabel("reward-model score")
        ax.set_ylabel("answers")
        ax.set_title("reward (all prompt sets)")
        ax.legend(fontsize=8)
        files.append(_save(fig, workdir, "eval_rewards.png"))
    if recs and "kl" in recs[0]:
        fig = Figure(figsize=(6, 3.5), layout="constrained")
        ax = fig.add_subplot()
        ax.hist([r["kl"] for r in recs], bins=30)
        ax.set_xlabel("sum_t log π − log π_ref")
        ax.set_ylabel("answers")
        ax.set_title("sequence KL to the reference (all prompt sets)")
        files.append(_save(fig, workdir, "eval_kl.png"))
    return files, ""


def _save(fig, workdir, name) -> str:
    fig.savefig(os.path.join(workdir, name), dpi=100)
    return name


def write_outputs(
    results: Mapping,
    examples: Mapping[str, Sequence[Mapping]],
    workdir: str,
    *,
    plots: bool = True,
    num_examples: int = 5,
) -> None:
    """eval.json, completions.jsonl, eval.md and (optionally) eval_*.png in `workdir`."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    with open(os.path.join(workdir, "completions.jsonl"), "w") as f:
        for name, recs in examples.items():
            for r in recs:
                f.write(json.dumps({"set": name, **r}, ensure_ascii=False) + "\n")
    files, note = write_plots(results, examples, workdir) if plots else ([], "")
    if note:
        print(note, flush=True)
    with open(os.path.join(workdir, "eval.md"), "w") as f:
        f.write(to_markdown(results, examples, files, note, num_examples) + "\n")
