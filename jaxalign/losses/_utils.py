"""Small helpers shared by the losses: float32 upcasts, masked reductions. Not part of the public API."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

REDUCTIONS = ("token", "sequence", "constant")


def f32(x) -> Array:
    """Any array (bf16, bool, int, Python float) as float32: every loss computes in float32."""
    return jnp.asarray(x).astype(jnp.float32)


def masked_sum(x: Array, mask: Array, axis=None) -> Array:
    """sum(x * mask). `where` first, so a NaN/inf at a masked-out position cannot leak through 0 * inf."""
    mask = f32(mask)
    return jnp.sum(jnp.where(mask != 0, x, 0.0) * mask, axis=axis)


def masked_mean(x: Array, mask: Array, axis=None) -> Array:
    """sum(x * mask) / max(sum(mask), 1): zero (not NaN) for an all-zero mask."""
    return masked_sum(x, mask, axis) / jnp.maximum(jnp.sum(f32(mask), axis=axis), 1.0)


def reduce_tokens(per_token: Array, mask: Array, reduction: str, *, weights: Array | None = None) -> Array:
    """Per-token losses [B, T] to a scalar.

    "token":    sum(l * m) / max(sum(m), 1) over the whole batch — every token weighs the same
                (DAPO, Yu et al. 2025; TRL's "bnpo"/"dapo" and its PPO trainer).
    "sequence": mean over sequences of each sequence's token mean (GRPO paper, Shao et al. 2024; TRL's
                "grpo"). Rows with no unmasked token are left out of the mean, so an all-padding row
                changes nothing (TRL divides by all rows instead).
    "constant": sum(l * m) / (B * T), T the padded length (Dr. GRPO, Liu et al. 2025; TRL's "dr_grpo").
                TRL's constant is B · max_completion_length; the RL rollouts pad every completion to
                rollout.max_new_tokens (static shapes), so T is that constant, not the longest completion.

    `weights` ([B], ≥ 0, no gradient), when given, weighs each row; with w_b ∈ {0, 1} a row of weight 0 is
    exactly as if it were removed from the batch (numerator and denominator alike):
      "token":    Σ_b w_b Σ_t m_bt l_bt / Σ_b w_b Σ_t m_bt
      "sequence": Σ_b w_b h_b mean_t(l_b) / Σ_b w_b h_b      (h_b = 1 if row b has a token)
      "constant": Σ_b w_b Σ_t m_bt l_bt / (Σ_b w_b · T)
    A zero denominator gives 0. `weights=None` is the unweighted reduction above, bit for bit.
    """
    mask = f32(mask)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")
    if weights is not None:
        return _weighted_reduce(per_token, mask, reduction, weights)
    if reduction == "token":
        return masked_mean(per_token, mask)
    if reduction == "sequence":
        per_seq = masked_mean(per_token, mask, axis=-1)  # [B]
        has_tokens = f32(jnp.sum(mask, axis=-1) > 0)  # [B]
        return jnp.sum(per_seq * has_tokens) / jnp.maximum(jnp.sum(has_tokens), 1.0)
    return masked_sum(per_token, mask) / max(mask.size, 1)  # "constant"


def _safe_div(num: Array, den: Array) -> Array:
    """num / den, and 0 where den == 0 (num is then 0 too: every term had weight 0)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _weighted_reduce(per_token: Array, mask: Array, reduction: str, weights: Array) -> Array:
    w = jax.lax.stop_gradient(f32(weights))
    if w.shape != mask.shape[:-1]:
        raise ValueError(f"weights of shape {w.shape}: expected one per row, {mask.shape[:-1]}")
    wm = mask * w[..., None]  # [B, T]
    if reduction == "token":
        return _safe_div(masked_sum(per_token, wm), jnp.sum(wm))
    if reduction == "sequence":
        per_seq = masked_mean(per_token, mask, axis=-1)  # [B]
        row_w = f32(jnp.sum(mask, axis=-1) > 0) * w  # [B]
        return _safe_div(jnp.sum(jnp.where(row_w != 0, per_seq, 0.0) * row_w), jnp.sum(row_w))
    return _safe_div(masked_sum(per_token, wm), jnp.sum(w) * mask.shape[-1])  # "constant"


def broadcast_to_tokens(x: Array, like: Array) -> Array:
    """A per-sequence value [B] broadcast against per-token values [B, T]; [B, T] passes through."""
    x = f32(x)
    return x[..., None] if x.ndim == like.ndim - 1 else x


def stop(metrics: dict) -> dict:
    """Metrics are reported, never differentiated; float32 scalars."""
    return {k: jax.lax.stop_gradient(f32(v)) for k, v in metrics.items()}


def preference_metrics(
    chosen_rewards: Array, rejected_rewards: Array, chosen_logps: Array, rejected_logps: Array
) -> dict:
    """TRL's pairwise metrics: mean rewards, accuracy (chosen > rejected), margin, mean log-probs."""
    return {
        "rewards/chosen": jnp.mean(chosen_rewards),
        "rewards/rejected": jnp.mean(rejected_rewards),
        "rewards/accuracies": jnp.mean(f32(chosen_rewards > rejected_rewards)),
        "rewards/margins": jnp.mean(chosen_rewards - rejected_rewards),
        "logps/chosen": jnp.mean(chosen_logps),
        "logps/rejected": jnp.mean(rejected_logps),
    }
