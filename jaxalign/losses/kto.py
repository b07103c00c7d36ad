"""Kahneman-Tversky Optimization: unpaired, binary-labelled preference loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._utils import f32, stop

Array = jax.Array


def kto_loss(
    policy_logps: Array,
    ref_logps: Array,
    labels: Array,
    kl: Array,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Array, dict]:
    """KTO (Ethayarajh et al. 2024, eq. 7-8), as TRL's KTOTrainer with loss_type="kto".

        r_i = log π(y_i|x_i) - log π_ref(y_i|x_i)
        z0  = max(stop_gradient(kl), 0)                        the reference point
        l_i = λ_D (1 - σ(β (r_i - z0)))   if y_i is desirable
              λ_U (1 - σ(β (z0 - r_i)))   if y_i is undesirable
        L   = mean_i l_i                                        (over the whole batch, both kinds)

    `kl` is computed by the caller, as in the paper from mismatched pairs (x_i, y_j) — TRL's
    `(KL_logps - ref_KL_logps).mean()` — or from the batch's own log-ratios; it is detached and clamped at 0
    here either way. λ_D, λ_U should keep λ_D n_D / (λ_U n_U) in [1, 4/3] (paper, sec. 4.2).

    Args:
      policy_logps: [B] summed policy log-probs of the completions.
      ref_logps: [B] summed reference log-probs (no gradient).
      labels: [B] 1 (or True) for desirable, 0 for undesirable completions.
      kl: scalar KL estimate z0.
      beta: β.
      desirable_weight: λ_D.
      undesirable_weight: λ_U.

    Returns:
      (loss, metrics): `kl` (z0), `rewards/chosen`, `rewards/rejected` (mean β r_i over desirable /
      undesirable examples; 0 when the batch has none), `rewards/margins` (their difference),
      `logps/chosen`, `logps/rejected` (likewise for the policy log-probs), `count/chosen`, `count/rejected`.
    """
    pol = f32(policy_logps)
    ref = jax.lax.stop_gradient(f32(ref_logps))
    desirable = f32(labels)  # [B] 1 / 0
    undesirable = 1.0 - desirable
    z0 = jnp.maximum(jax.lax.stop_gradient(f32(kl)), 0.0)
    logratios = pol - ref  # [B]
    chosen_losses = 1.0 - jax.nn.sigmoid(beta * (logratios - z0))
    rejected_losses = 1.0 - jax.nn.sigmoid(beta * (z0 - logratios))
    losses = desirable_weight * desirable * chosen_losses + undesirable_weight * undesirable * rejected_losses
    rewards = beta * logratios
    n_c, n_r = jnp.sum(desirable), jnp.sum(undesirable)
    mean_c = lambda x: jnp.sum(x * desirable) / jnp.maximum(n_c, 1.0)
    mean_r = lambda x: jnp.sum(x * undesirable) / jnp.maximum(n_r, 1.0)
    metrics = {
        "kl": z0,
        "rewards/chosen": mean_c(rewards),
        "rewards/rejected": mean_r(rewards),
        "rewards/margins": mean_c(rewards) - mean_r(rewards),
        "logps/chosen": mean_c(pol),
        "logps/rejected": mean_r(pol),
        "count/chosen": n_c,
        "count/rejected": n_r,
    }
    return jnp.mean(losses), stop(metrics)


def kto_reference_point(policy_logps: Array, ref_logps: Array) -> Array:
    """The batch's own KTO reference point (the `kl` argument of `kto_loss`):

        z0 = max(stop_gradient(mean_i (log π(y_i|x_i) - log π_ref(y_i|x_i))), 0)

    Args:
      policy_logps, ref_logps: [B] summed sequence log-probs.

    Returns:
      float32 scalar, detached.
    """
    return jnp.maximum(jax.lax.stop_gradient(jnp.mean(f32(policy_logps) - f32(ref_logps))), 0.0)
