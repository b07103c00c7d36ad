"""GRPO's loss and group-relative advantages; RLOO's leave-one-out advantages.

Rewards of a group are contiguous: with `group_size = G`, rows [g·G, (g+1)·G) are the G completions of
prompt g (TRL's `repeat_interleave` layout).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._utils import broadcast_to_tokens, f32, masked_mean, reduce_tokens, stop
from jaxalign.losses.kl import kl_penalty

Array = jax.Array


def _grouped(rewards: Array, group_size: int) -> Array:
    r = f32(rewards)
    if r.ndim != 1 or r.shape[0] % group_size:
        raise ValueError(
            f"rewards of shape {r.shape}: expected [B] with B a multiple of group_size={group_size}"
        )
    return r.reshape(-1, group_size)  # [B/G, G]


def _constant(g: Array) -> Array:
    """[N, G] -> [N, 1]: the group's rewards are all equal. Its advantages are then exactly 0 (the mean of
    G equal floats need not round back to them, and ÷ (std + eps) would magnify the residue)."""
    return jnp.max(g, axis=1, keepdims=True) == jnp.min(g, axis=1, keepdims=True)


def group_advantages(rewards: Array, group_size: int, normalize_std: bool = True, eps: float = 1e-4) -> Array:
    """GRPO's group-relative advantages (Shao et al. 2024, sec. 4.1.2), as TRL's GRPOTrainer.

        A_i = (r_i - mean_group(r)) / (std_group(r) + eps)

    std is the unbiased (n - 1) standard deviation, eps = 1e-4, both as TRL. `normalize_std=False` gives
    r_i - mean_group(r) (Dr. GRPO, Liu et al. 2025; TRL's `scale_rewards="none"`).

    Args:
      rewards: [B] scalar rewards, B = num_prompts × group_size, groups contiguous.
      group_size: G, completions per prompt (≥ 2 when normalize_std).
      normalize_std: divide by the group's standard deviation.
      eps: added to the standard deviation.

    Returns:
      [B] float32 advantages (one per completion; `grpo_loss` broadcasts them over tokens).
    """
    g = _grouped(rewards, group_size)
    centered = g - jnp.mean(g, axis=1, keepdims=True)
    if normalize_std:
        std = jnp.sqrt(jnp.sum(jnp.square(centered), axis=1, keepdims=True) / max(group_size - 1, 1))
        centered = centered / (std + eps)
    return jnp.where(_constant(g), 0.0, centered).reshape(-1)


def rloo_advantages(rewards: Array, group_size: int) -> Array:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024), as TRL's RLOOTrainer.

        A_i = r_i - 1/(G-1) sum_{j≠i in group} r_j   = G/(G-1) (r_i - mean_group(r))

    Args:
      rewards: [B] scalar rewards, B = num_prompts × group_size, groups contiguous.
      group_size: G ≥ 2.

    Returns:
      [B] float32 advantages.
    """
    if group_size < 2:
        raise ValueError(f"group_size={group_size}: the leave-one-out baseline needs at least 2 per group")
    g = _grouped(rewards, group_size)
    baseline = (jnp.sum(g, axis=1, keepdims=True) - g) / (group_size - 1)
    return jnp.where(_constant(g), 0.0, g - baseline).reshape(-1)


def grpo_loss(
    logprobs: Array,
    old_logprobs: Array,
    ref_logprobs: Array | None,
    advantages: Array,
    mask: Array,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    reduction: str = "sequence",
    clip_eps_high: float | None = None,
) -> tuple[Array, dict]:
    """Group Relative Policy Optimization loss (Shao et al. 2024, eq. 3), as TRL's GRPOTrainer.

        ρ_t = exp(log π(o_t) - log π_old(o_t))
        l_t = -min(ρ_t A, clip(ρ_t, 1 - ε_low, 1 + ε_high) A) + β k3_t
        k3_t = exp(log π_ref(o_t) - log π(o_t)) - (log π_ref(o_t) - log π(o_t)) - 1
        L   = reduce(l, mask)

    `reduction` — where the papers differ:
      "sequence" (default): mean over sequences of each one's token mean, the GRPO paper's 1/G Σ 1/|o_i| Σ_t
                 (TRL's loss_type="grpo"); rows with no token are left out.
      "token":   token mean over the whole batch (DAPO, Yu et al. 2025; TRL's "bnpo"/"dapo").
      "constant": sum / (B·T) (Dr. GRPO; TRL's "dr_grpo" with T = max completion length).
    `clip_eps_high` (DAPO's clip-higher) defaults to `clip_eps`.

    Args:
      logprobs: [B, T] token log-probs of the current policy.
      old_logprobs: [B, T] log-probs of the sampling policy (no gradient; with one update per batch pass
        `stop_gradient(logprobs)`, making ρ = 1 in value but not in gradient).
      ref_logprobs: [B, T] reference log-probs (no gradient), or None when beta = 0.
      advantages: [B] per-completion (from `group_advantages`) or [B, T] (no gradient).
      mask: [B, T] 0/1 completion mask.
      clip_eps: ε_low.
      beta: KL coefficient β.
      reduction: "sequence" | "token" | "constant".
      clip_eps_high: ε_high, or None for ε_low.

    Returns:
      (loss, metrics): `kl` (token mean of k3, when ref_logprobs is given), `clip_ratio/low_mean`,
      `clip_ratio/high_mean`, `clip_ratio/region_mean` (token fractions clipped below with A < 0, above
      with A > 0, either; TRL's definitions).
    """
    if ref_logprobs is None and not (isinstance(beta, (int, float)) and beta == 0):
        raise ValueError("grpo_loss: ref_logprobs is None but beta != 0")
    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    lp = f32(logprobs)
    old = jax.lax.stop_gradient(f32(old_logprobs))
    adv = jax.lax.stop_gradient(broadcast_to_tokens(advantages, lp))
    ratio = jnp.exp(lp - old)
    per_token = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)
    metrics = {}
    if ref_logprobs is not None:
        ref = jax.lax.stop_gradient(f32(ref_logprobs))
        kl = kl_penalty(lp, ref, "k3")  # [B, T]
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl, mask)
    loss = reduce_tokens(per_token, mask, reduction)
    low = (ratio < 1.0 - eps_low) & (adv < 0)
    high = (ratio > 1.0 + eps_high) & (adv > 0)
    metrics.update(
        {
            "clip_ratio/low_mean": masked_mean(f32(low), mask),
            "clip_ratio/high_mean": masked_mean(f32(high), mask),
            "clip_ratio/region_mean": masked_mean(f32(low | high), mask),
        }
    )
    return loss, stop(metrics)
