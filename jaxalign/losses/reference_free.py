"""Reference-free preference losses: ORPO and SimPO. Both take length-averaged log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._utils import f32, preference_metrics, stop

Array = jax.Array

_LOG_HALF = -0.6931471805599453


def log1mexp(x: Array) -> Array:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Mächler 2012): log1p(-exp(x)) loses precision
    as x -> 0 (1 - exp(x) cancels), log(-expm1(x)) as x -> -inf; switch at x = -log 2."""
    # Each branch gets a safe input so the unused one cannot produce NaN gradients.
    lo = jnp.minimum(x, _LOG_HALF)
    hi = jnp.maximum(x, _LOG_HALF)
    return jnp.where(x < _LOG_HALF, jnp.log1p(-jnp.exp(lo)), jnp.log(-jnp.expm1(hi)))


def orpo_loss(
    chosen_logps: Array, rejected_logps: Array, nll_chosen: Array, *, beta: float = 0.1
) -> tuple[Array, dict]:
    """Odds-Ratio Preference Optimization (Hong et al. 2024, eq. 6-7), as TRL's ORPOTrainer.

        log odds(y) = log p(y) - log(1 - p(y))        with log p(y) the *length-averaged* log-prob
        z = log odds(y_c) - log odds(y_r)
        L = nll_chosen - β * mean_i[ log σ(z_i) ]

    (β is the paper's λ.) log(1 - p) is `log1mexp`, stable for p near 0 and 1; log σ via
    `jax.nn.log_sigmoid`, which does not underflow. An average log-prob of exactly 0 (p = 1) makes the
    odds infinite.

    Args:
      chosen_logps: [B] average log-probs of the chosen completions (`sequence_logprobs(average=True)`).
      rejected_logps: [B] average log-probs of the rejected completions.
      nll_chosen: scalar (or [B], then averaged): the SFT term, the NLL of the chosen completions.
      beta: weight λ of the odds-ratio term.

    Returns:
      (loss, metrics): `rewards/chosen`, `rewards/rejected` (β * average log-probs), `rewards/accuracies`,
      `rewards/margins`, `logps/chosen`, `logps/rejected`, `nll_loss`, `log_odds_ratio` (mean log σ(z)),
      `log_odds_chosen` (mean z), as TRL logs them.
    """
    pc, pr = f32(chosen_logps), f32(rejected_logps)
    nll = jnp.mean(f32(nll_chosen))
    log_odds = (pc - pr) - (log1mexp(pc) - log1mexp(pr))  # [B]
    ratio = jax.nn.log_sigmoid(log_odds)  # [B]
    loss = nll - beta * jnp.mean(ratio)
    chosen_rewards, rejected_rewards = beta * pc, beta * pr
    metrics = {
        **preference_metrics(chosen_rewards, rejected_rewards, pc, pr),
        "nll_loss": nll,
        "log_odds_ratio": jnp.mean(ratio),
        "log_odds_chosen": jnp.mean(log_odds),
    }
    return loss, stop(metrics)


def simpo_loss(
    chosen_logps: Array,
    rejected_logps: Array,
    *,
    beta: float = 2.0,
    gamma: float | None = None,
    gamma_beta_ratio: float | None = None,
    label_smoothing: float = 0.0,
) -> tuple[Array, dict]:
    """Simple Preference Optimization (Meng et al. 2024, eq. 6), as TRL's CPOTrainer with loss_type="simpo".

        z = β * (avg log π(y_c) - avg log π(y_r)) - γ
        L = mean_i[ -(1 - ε) log σ(z_i) - ε log σ(-z_i) ]        (ε = label_smoothing, 0 in the paper)

    γ (`gamma`) is the target reward margin in reward units — the paper's γ and TRL's `simpo_gamma`
    (TRL writes it as β(Δ - γ/β)). The paper tunes γ/β instead (`gamma_beta_ratio`); give one or the other.
    With neither, γ/β = 0.5, so the defaults β = 2.0, γ = 1.0 are the paper's recommended setting. No
    reference model and no SFT term (TRL's `cpo_alpha` = 0). log σ via `jax.nn.log_sigmoid` for stability.

    Args:
      chosen_logps: [B] length-averaged log-probs of the chosen completions.
      rejected_logps: [B] length-averaged log-probs of the rejected completions.
      beta: reward scale β.
      gamma: target reward margin γ; or
      gamma_beta_ratio: γ/β (γ = gamma_beta_ratio * β).
      label_smoothing: ε in [0, 0.5).

    Returns:
      (loss, metrics): `rewards/chosen`, `rewards/rejected` (β * average log-probs), `rewards/accuracies`,
      `rewards/margins`, `logps/chosen`, `logps/rejected`.
    """
    if gamma is not None and gamma_beta_ratio is not None:
        raise ValueError(
            "give simpo_loss either gamma (the margin) or gamma_beta_ratio (gamma / beta), not both"
        )
    if gamma is None:
        gamma = beta * (0.5 if gamma_beta_ratio is None else gamma_beta_ratio)
    pc, pr = f32(chosen_logps), f32(rejected_logps)
    z = beta * (pc - pr) - gamma
    losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)
    chosen_rewards, rejected_rewards = beta * pc, beta * pr
    metrics = preference_metrics(chosen_rewards, rejected_rewards, pc, pr)
    return jnp.mean(losses), stop(metrics)
