"""Per-token KL estimators and the adaptive KL-coefficient controller."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.losses._utils import f32

Array = jax.Array

KL_KINDS = ("k1", "k2", "k3", "abs")


def kl_penalty(logprobs: Array, ref_logprobs: Array, kind: str = "k1") -> Array:
    """Per-token estimates of KL(π || π_ref) from samples of π (Schulman, "Approximating KL divergence", 2020).

    With Δ = log π(a) - log π_ref(a) at the sampled token:
      "k1":  Δ                          unbiased, high variance, can be negative (TRL's "kl")
      "k2":  0.5 Δ^2                    biased, low variance, ≥ 0 (TRL's "mse")
      "k3":  exp(-Δ) - 1 + Δ            unbiased, low variance, ≥ 0 (GRPO's KL term; TRL's "low_var_kl")
      "abs": |Δ|                        (TRL's "abs")

    Args:
      logprobs: [...] token log-probs of the policy (the sampling distribution).
      ref_logprobs: [...] token log-probs of the reference at the same tokens.
      kind: one of KL_KINDS.

    Returns:
      [...] float32 per-token estimates; mask and reduce them as the objective needs.
    """
    delta = f32(logprobs) - f32(ref_logprobs)
    if kind == "k1":
        return delta
    if kind == "k2":
        return 0.5 * jnp.square(delta)
    if kind == "k3":
        # exp(-Δ) - 1 via expm1: exact near Δ = 0, where the estimator is a small difference of O(1) terms.
        return jnp.expm1(-delta) + delta
    if kind == "abs":
        return jnp.abs(delta)
    raise ValueError(f"kind={kind!r}: expected one of {KL_KINDS}")


class AdaptiveKLState(NamedTuple):
    """State of the adaptive KL controller: `value` is the current KL coefficient β (float32 scalar)."""

    value: Array


def init_adaptive_kl(init_kl_coef: float) -> AdaptiveKLState:
    """The controller's starting state (Ziegler et al. use β0 = 0.1 or 0.2)."""
    return AdaptiveKLState(value=jnp.asarray(init_kl_coef, jnp.float32))


def adaptive_kl_update(
    state: AdaptiveKLState, current_kl: Array, n_steps: Array | int, target: float, horizon: float
) -> AdaptiveKLState:
    """One step of the adaptive KL controller (Ziegler et al. 2019, eq. 2), a pure function of the state.

        e_t     = clip(KL_t / KL_target - 1, -0.2, 0.2)
        β_{t+1} = β_t (1 + K_β e_t),        K_β = n_steps / horizon

    β grows when the measured KL is above the target and shrinks when below; the clipped proportional error
    bounds the change per update. Same as TRL's `AdaptiveKLController.update`.

    Args:
      state: current `AdaptiveKLState`.
      current_kl: scalar, the measured KL(π || π_ref) per sequence of the last batch.
      n_steps: samples (episodes) seen since the previous update — TRL passes the batch size.
      target: KL_target.
      horizon: H, in samples.

    Returns:
      The next `AdaptiveKLState`.
    """
    error = jnp.clip(f32(current_kl) / target - 1.0, -0.2, 0.2)
    mult = 1.0 + error * f32(n_steps) / horizon
    return AdaptiveKLState(value=f32(state.value) * mult)
