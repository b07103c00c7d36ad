"""Importance correction for rollouts sampled by an older policy than the one being trained (off-policy
overlap, `rollout.max_staleness` > 0) or by a sampler whose numerics differ from the trainer's.

The update's ratio π_θ / π_old is taken to the proximal policy π_old (the parameters at the update, as
decoupled PPO); the tokens were drawn from the behaviour policy μ (the sampler's parameters k steps ago).
Each token's policy-gradient term is weighed by how likely the proximal policy finds it relative to μ:

    ρ_t = π_old(o_t) / μ(o_t) = exp(log π_old(o_t) - log μ(o_t))          (no gradient)
    "tis":    w_t = min(ρ_t, C)         truncated importance sampling (Yao et al. 2025, "Your efficient RL
                                        framework secretly brings you off-policy RL training"; TRL's
                                        vllm_importance_sampling_mode="token_truncate")
    "icepop": w_t = 1[α ≤ ρ_t ≤ β]      IcePop (Ling Team 2025): tokens whose ratio leaves the band add no
                                        gradient (TRL's "token_mask")
    "none":   w_t = 1                   the stale samples are treated as on-policy

`grpo_loss` and `ppo_clip_loss` take w as `token_weights` and multiply their clipped surrogate by it (the
KL term to the reference is left as it is).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._utils import f32, masked_mean, stop

Array = jax.Array

CORRECTIONS = ("none", "tis", "icepop")


def importance_weights(
    prox_logprobs: Array,
    behaviour_logprobs: Array,
    mask: Array,
    *,
    kind: str = "tis",
    cap: float = 2.0,
    band: tuple[float, float] = (0.5, 5.0),
) -> tuple[Array, dict]:
    """Per-token importance weights of a stale rollout (see the module docstring).

    Args:
      prox_logprobs: [B, T] log-probs of the sampled tokens under the policy at the update (π_old).
      behaviour_logprobs: [B, T] the sampler's log-probs of the same tokens (μ).
      mask: [B, T] 0/1 completion mask.
      kind: "tis" | "icepop" | "none".
      cap: C of "tis" (> 0).
      band: (α, β) of "icepop", 0 ≤ α < β.

    Returns:
      (w [B, T] float32, no gradient, 0 at masked positions; metrics `off_policy/is_ratio` (mean ρ over
      tokens), `off_policy/is_ratio_max`, `off_policy/corrected_frac` (tokens truncated by "tis" or
      masked by "icepop"; 0 for "none")).
    """
    if kind not in CORRECTIONS:
        raise ValueError(f"kind={kind!r}: expected one of {CORRECTIONS}")
    m = f32(mask)
    log_rho = jax.lax.stop_gradient(f32(prox_logprobs) - f32(behaviour_logprobs))
    rho = jnp.exp(jnp.where(m != 0, log_rho, 0.0))
    if kind == "tis":
        w = jnp.minimum(rho, cap)
        corrected = rho > cap
    elif kind == "icepop":
        lo, hi = band
        inside = (rho >= lo) & (rho <= hi)
        w = f32(inside)
        corrected = ~inside
    else:
        w = jnp.ones_like(rho)
        corrected = jnp.zeros_like(rho, dtype=bool)
    metrics = {
        "off_policy/is_ratio": masked_mean(rho, m),
        "off_policy/is_ratio_max": jnp.max(jnp.where(m != 0, rho, 0.0)),
        "off_policy/corrected_frac": masked_mean(f32(corrected), m),
    }
    return w * m, stop(metrics)
