"""Online (iterative) DPO: pairs from the policy's own samples, labelled by a reward, then DPO updates.

Each step is one round (Xu et al. 2023, "Some things are more CRINGE than others"; Guo et al. 2024,
"Direct Language Model Alignment from Online AI Feedback"; TRL's OnlineDPOTrainer with n > 2): every
prompt of the step is answered `n` times by the current policy (rows [p·n, (p+1)·n) share prompt p), each
answer is scored by one of three labellers, and the best and the worst answer of each prompt become a
pair. The labellers:

  reward.function    a checkable reward, Python `(answer, completion) -> float`;
  reward.model_path  a reward model's scalar score;
  reward.judge       an LLM judge (any HF chat model: Guo et al.'s AI feedback) in a round robin: each of
                     the n(n-1)/2 pairs of a prompt's answers is judged in both orders (`eval.judge`,
                     position bias cancelled: p(i ≻ j) = (p(i wins | i first) + p(i wins | j first)) / 2),
                     and an answer's score is its mean win probability against the other n-1 (a Borda
                     count with probabilities)

                         score_{p,i} = 1/(n-1) · Σ_{j≠i} p(i ≻ j),   p(j ≻ i) = 1 - p(i ≻ j),

                     in [0, 1], summing to n/2 over a prompt (`eval.judge.round_robin`; identical answers
                     tie at exactly ½; `reward.judge_template` is the judge's message).

Then, whatever the labeller,

    chosen_p = argmax_i score_{p,i},   rejected_p = argmin_i score_{p,i},
    margin_p = score(chosen_p) - score(rejected_p),   weight_p = 1[margin_p >= min_margin and > 0]

(`score` includes `reward.missing_eos_penalty` for answers that never stopped). Prompts whose answers all
scored the same give no pair (weight 0: dropped, counted in `pairs/kept_frac`; their fraction is
`pairs/tied_frac`). The DPO loss (`losses.dpo_loss`, any `loss_type`) on the kept pairs against the
frozen reference (the starting policy), averaged over them, is then minimised for `epochs` passes over
`num_minibatches` shuffled minibatches of pairs: one round = one rollout, several updates.

How good the labels are, whatever the labeller, against the checkable answer (`reward.check_fn`: each
answer's `correct` c ∈ {0, 1}): over the kept pairs whose chosen and rejected answers differ in
correctness, `pairs/checkable` = their number in the step and

    pairs/label_accuracy = Σ_p w_p · 1[c(chosen_p) ≠ c(rejected_p)] · c(chosen_p) / pairs/checkable,

the fraction of them whose chosen answer is the correct one (0 in a step with no checkable pair: read it
with `pairs/checkable`; all three absent without `reward.check_fn`). `pairs/label_correct` is the
numerator, a count: over several steps, Σ label_correct / Σ checkable is the label accuracy (a mean of the
per-step ratios would count a step with no checkable pair as 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign import losses
from jaxalign.sampling.scoring import completion_logprobs
from jaxalign.trainers.algorithm import declare
from jaxalign.trainers.rewards import rollout_metrics


def group_size(hp):
    """Samples per prompt."""
    return int(hp["n"])


def rows_per_prompt(hp):
    """Rows of the prepared batch per prompt: one pair."""
    del hp
    return 1


def epochs(hp):
    return int(hp["epochs"])


def num_minibatches(hp):
    return int(hp["num_minibatches"])


def kl_coef(hp):
    """No KL penalty in the reward (β is DPO's, inside the loss)."""
    del hp
    return 0.0


def uses_reference(hp):
    del hp
    return True


def needs_old_logprobs(hp):
    del hp
    return False


def _sequence(rows, prefix):
    """A pair batch's `prefix` answers as a rollout that `completion_logprobs` reads."""
    return {
        "prompt_ids": rows["prompt_ids"],
        "prompt_segment_ids": rows["prompt_segment_ids"],
        "tokens": rows[prefix + "tokens"],
        "mask": rows[prefix + "mask"],
    }


def make_loss_fn(policy_model, value_model, hp):
    """`loss_fn(params, frozen, pairs) -> (loss, metrics)`: `losses.dpo_loss` per pair (summed log-probs;
    length-averaged for "ipo", as offline), averaged over the pairs with weight 1."""
    del value_model  # CRITIC = False
    average = hp["loss_type"] == "ipo"

    def seq_logps(params, rows, prefix):
        logprobs, _ = completion_logprobs(policy_model, params["policy"], _sequence(rows, prefix))
        mask = rows[prefix + "mask"].astype(jnp.float32)
        total = jnp.sum(logprobs, axis=-1)
        return total / jnp.maximum(jnp.sum(mask, -1), 1.0) if average else total

    def per_pair(c, r, rc, rr):
        loss, metrics = losses.dpo_loss(
            c[None],
            r[None],
            rc[None],
            rr[None],
            beta=hp["beta"],
            loss_type=hp["loss_type"],
            label_smoothing=hp["label_smoothing"],
            dpop_lambda=hp.get("dpop_lambda", 0.0),
        )
        return loss, metrics

    def loss_fn(params, frozen, pairs):
        del frozen  # the reference's log-probs are in the batch (the score step computed them)
        chosen, rejected = seq_logps(params, pairs, "chosen_"), seq_logps(params, pairs, "rejected_")
        loss, metrics = jax.vmap(per_pair)(
            chosen, rejected, pairs["ref_chosen_logps"], pairs["ref_rejected_logps"]
        )
        w = pairs["weight"]
        n = jnp.maximum(jnp.sum(w), 1.0)
        return jnp.sum(w * loss) / n, {k: jnp.sum(w * v) / n for k, v in metrics.items()}

    return loss_fn


def prepare(rollout, kl_coef, hp):
    """A scored rollout of R = P·n answers -> (P pairs: prompt, chosen and rejected tokens/masks, their
    reference log-probs, weight; rollout metrics; kl_coef unchanged)."""
    n = int(hp["n"])
    average = hp["loss_type"] == "ipo"
    score = rollout["score"] - hp["missing_eos_penalty"] * (1.0 - rollout["stopped"])  # [R]
    groups = score.reshape(-1, n)  # [P, n]
    p = groups.shape[0]
    best, worst = jnp.argmax(groups, axis=1), jnp.argmin(groups, axis=1)
    margin = jnp.max(groups, axis=1) - jnp.min(groups, axis=1)
    weight = ((margin > 0) & (margin >= hp["min_margin"])).astype(jnp.float32)
    rows_c, rows_r = jnp.arange(p) * n + best, jnp.arange(p) * n + worst
    mask = rollout["mask"].astype(jnp.float32)
    ref = jnp.sum(rollout["ref_logprobs"] * mask, axis=-1)  # [R]
    if average:
        ref = ref / jnp.maximum(jnp.sum(mask, -1), 1.0)
    pairs = {
        "prompt_ids": rollout["prompt_ids"][rows_c],
        "prompt_segment_ids": rollout["prompt_segment_ids"][rows_c],
        "chosen_tokens": rollout["tokens"][rows_c],
        "chosen_mask": rollout["mask"][rows_c],
        "rejected_tokens": rollout["tokens"][rows_r],
        "rejected_mask": rollout["mask"][rows_r],
        "ref_chosen_logps": ref[rows_c],
        "ref_rejected_logps": ref[rows_r],
        "weight": weight,
    }
    metrics = {
        "reward/score": jnp.mean(score),
        "pairs/kept_frac": jnp.mean(weight),
        "pairs/tied_frac": jnp.mean((margin == 0).astype(jnp.float32)),
        "pairs/margin": jnp.sum(weight * margin) / jnp.maximum(jnp.sum(weight), 1.0),
        "pairs/chosen_score": jnp.mean(score[rows_c]),
        "pairs/rejected_score": jnp.mean(score[rows_r]),
        **rollout_metrics(rollout),
    }
    if "correct" in rollout:
        metrics.update(label_accuracy(rollout["correct"][rows_c], rollout["correct"][rows_r], weight))
    return pairs, metrics, kl_coef


def label_accuracy(correct_chosen, correct_rejected, weight):
    """Pairs' labels against the checkable answer (module docstring): {"pairs/label_accuracy",
    "pairs/label_correct", "pairs/checkable"} over the kept pairs (weight 1) whose answers differ in correctness."""
    c, r = (jnp.asarray(x, jnp.float32) for x in (correct_chosen, correct_rejected))
    checkable = jnp.asarray(weight, jnp.float32) * (c != r)
    count, right = jnp.sum(checkable), jnp.sum(checkable * c)
    return {
        "pairs/label_accuracy": right / jnp.maximum(count, 1.0),
        "pairs/label_correct": right,
        "pairs/checkable": count,
    }


ALGORITHM = declare(__name__, "online_dpo", critic=False, packs=False, corrects=False)
