"""Direct Preference Optimization and its pairwise variants (IPO, hinge/SLiC, robust DPO, cDPO)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._utils import f32, preference_metrics, stop

Array = jax.Array

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def dpo_loss(
    policy_chosen_logps: Array,
    policy_rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    dpop_lambda: float = 0.0,
) -> tuple[Array, dict]:
    """DPO loss family on sequence log-probs, with TRL DPOTrainer's formulas and metric names.

    With the policy/reference log-ratio difference

        z = (log π(y_c) - log π_ref(y_c)) - (log π(y_r) - log π_ref(y_r)),   ε = label_smoothing,

    the per-pair loss, averaged over the batch, is
      "sigmoid" (DPO, Rafailov et al. 2023; ε > 0 is conservative DPO, cDPO, Mitchell 2023):
          -(1 - ε) log σ(βz) - ε log σ(-βz)
      "ipo"     (IPO, Azar et al. 2023, eq. 17, β is their τ):   (z - 1/(2β))^2
      "hinge"   (SLiC, Zhao et al. 2023):                        relu(1 - βz)
      "robust"  (rDPO, Chowdhury et al. 2024, ε = flip rate):
          (-(1 - ε) log σ(βz) + ε log σ(-βz)) / (1 - 2ε)
    `label_smoothing` is read by "sigmoid" and "robust" only. `jax.nn.log_sigmoid` keeps log σ finite
    where log(sigmoid(x)) would underflow to -inf.

    DPO-Positive (DPOP, Pal et al. 2024, "Smaug", eq. 3), `dpop_lambda` = λ > 0: every loss type reads

        z' = z - λ · max(0, log π_ref(y_c) - log π(y_c))

    instead of z, so that raising the margin by pushing the chosen completion's log-prob below the
    reference's (displacement: both log-probs fall, the rejected one faster) is penalised.

    Log-probs are inputs, so the length convention is the caller's: DPO uses summed log-probs
    (`sequence_logprobs(..., average=False)`). IPO's paper defines the loss on length-averaged log-probs
    (TRL divides the log-ratios by the completion length, which the IPO authors confirmed), so for
    "ipo" pass `average=True` log-probs for both policy and reference; `jaxalign.trainers` does so. With
    summed log-probs the IPO loss grows with completion length and 1/(2β) means something else.

    Args:
      policy_chosen_logps: [B] policy log-probs of the chosen completions.
      policy_rejected_logps: [B] policy log-probs of the rejected completions.
      ref_chosen_logps: [B] reference log-probs (no gradient is taken through them; pass zeros for a
        reference-free loss).
      ref_rejected_logps: [B].
      beta: inverse temperature β (> 0).
      loss_type: one of DPO_LOSS_TYPES.
      label_smoothing: ε in [0, 0.5).
      dpop_lambda: λ >= 0 (0 = plain DPO).

    Returns:
      (loss, metrics): metrics `rewards/chosen`, `rewards/rejected` (batch means of the implicit rewards
      β(log π - log π_ref)), `rewards/accuracies` (mean of reward_c > reward_r), `rewards/margins`,
      `logps/chosen`, `logps/rejected` (mean policy log-probs), `logps/chosen_shift` (the mean of
      log π(y_c) - log π_ref(y_c): negative when the chosen completions lose probability, displacement)
      and, with λ > 0, `dpop/penalty` (the mean of max(0, log π_ref(y_c) - log π(y_c))).
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: expected one of {DPO_LOSS_TYPES}")
    if loss_type == "robust" and isinstance(label_smoothing, (int, float)) and not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing!r}: the robust loss needs it in [0, 0.5)")
    pc, pr = f32(policy_chosen_logps), f32(policy_rejected_logps)
    rc, rr = jax.lax.stop_gradient(f32(ref_chosen_logps)), jax.lax.stop_gradient(f32(ref_rejected_logps))
    chosen_logratios = pc - rc  # [B]
    rejected_logratios = pr - rr  # [B]
    z = chosen_logratios - rejected_logratios  # [B]
    penalty = jax.nn.relu(-chosen_logratios)  # [B] how far the chosen log-probs fell below the reference's
    if dpop_lambda:
        z = z - dpop_lambda * penalty
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1.0 - eps) * jax.nn.log_sigmoid(beta * z) - eps * jax.nn.log_sigmoid(-beta * z)
    elif loss_type == "ipo":
        losses = jnp.square(z - 1.0 / (2.0 * beta))
    elif loss_type == "hinge":
        losses = jax.nn.relu(1.0 - beta * z)
    else:  # robust
        losses = (-(1.0 - eps) * jax.nn.log_sigmoid(beta * z) + eps * jax.nn.log_sigmoid(-beta * z)) / (
            1.0 - 2.0 * eps
        )
    chosen_rewards = beta * chosen_logratios
    rejected_rewards = beta * rejected_logratios
    metrics = preference_metrics(chosen_rewards, rejected_rewards, pc, pr)
    metrics["logps/chosen_shift"] = jnp.mean(chosen_logratios)
    if dpop_lambda:
        metrics["dpop/penalty"] = jnp.mean(penalty)
    return jnp.mean(losses), stop(metrics)
