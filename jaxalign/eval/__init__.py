"""Evaluation of checkpoints: task accuracy, stop rate, KL to a reference, reward and win rate,
perplexity, length, diversity and refusal rates (see `run` for the flow, `metrics` for the formulas).

    from jaxalign.eval import evaluate_checkpoint, compare
    results = evaluate_checkpoint("runs/dpo/hf", "prompts_test.jsonl", reference="runs/sft/hf",
                                  reward_model="runs/reward/hf", workdir="/tmp/ev")
    print(compare({"sft": sft_results, "dpo": results}))
"""

from jaxalign.eval import metrics
from jaxalign.eval.report import compare
from jaxalign.eval.run import SET_METRICS, evaluate_and_report, evaluate_checkpoint

__all__ = ["metrics", "compare", "evaluate_checkpoint", "evaluate_and_report", "SET_METRICS"]
