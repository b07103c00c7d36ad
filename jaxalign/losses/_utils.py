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


def reduce_tokens(per_token: Array, mask: Array, reduction: str) -> Array:
    """Per-token losses [B, T] to a scalar.

    "token":    sum(l * m) / max(sum(m), 1) over the whole batch — every token weighs the same
                (DAPO, Yu et al. 2025; TRL's "bnpo"/"dapo" and its PPO trainer).
    "sequence": mean over sequences of each sequence's token mean (GRPO paper, Shao et al. 2024; TRL's
                "grpo"). Rows with no unmasked token are left out of the mean, so an all-padding row
                changes nothing (TRL divides by all rows instead).
    "constant": sum(l * m) / (B * T), T the padded length (Dr. GRPO, Liu et al. 2025; TRL's "dr_grpo").
    """
    mask = f32(mask)
    if reduction == "token":
        return masked_mean(per_token, mask)
    if reduction == "sequence":
        per_seq = masked_mean(per_token, mask, axis=-1)  # [B]
        has_tokens = f32(jnp.sum(mask, axis=-1) > 0)  # [B]
        return jnp.sum(per_seq * has_tokens) / jnp.maximum(jnp.sum(has_tokens), 1.0)
    if reduction == "constant":
        return masked_sum(per_token, mask) / max(mask.size, 1)
    raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")


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
