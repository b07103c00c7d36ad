"""GRPO's loss (with GSPO's sequence-level ratio, DAPO's clip-higher and row weights, Dr. GRPO's
constant reduction), group-relative advantages, RLOO's leave-one-out advantages, DAPO's overlong penalty
and dynamic-sampling filter.

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


IMPORTANCE_LEVELS = ("token", "sequence")
# The per-token objective (TRL's `loss_type` names): the clipped ratio ("grpo"; "bnpo" is the same with the
# token mean over the batch), or CISPO's, SAPO's or GMPO's (see `grpo_loss`).
LOSS_TYPES = ("grpo", "bnpo", "cispo", "sapo", "gmpo")


def grpo_loss(
    logprobs: Array,
    old_logprobs: Array,
    ref_logprobs: Array | None,
    advantages: Array,
    mask: Array,
    *,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    reduction: str = "sequence",
    clip_eps_high: float | None = None,
    importance_level: str = "token",
    weights: Array | None = None,
    token_weights: Array | None = None,
    loss_type: str = "grpo",
    sapo_temperatures: tuple[float, float] = (1.0, 1.05),
) -> tuple[Array, dict]:
    """Group Relative Policy Optimization loss (Shao et al. 2024, eq. 3), as TRL's GRPOTrainer, with the
    GSPO, DAPO and Dr. GRPO variants.

        log w = log π(o_t) - log π_old(o_t)                          importance_level="token" (GRPO)
        log w = 1/|o| Σ_t (log π(o_t) - log π_old(o_t))              importance_level="sequence" (GSPO)
        l_t = -c_t min(w A, clip(w, 1 - ε_low, 1 + ε_high) A) + β k3_t   (c_t = token_weights, else 1)
        k3_t = exp(log π_ref(o_t) - log π(o_t)) - (log π_ref(o_t) - log π(o_t)) - 1
        L   = reduce(l, mask, weights)

    `importance_level="sequence"` is GSPO (Zheng et al. 2025, sec. 4): one ratio per completion,
    s_i = (π(o_i)/π_old(o_i))^(1/|o_i|), the geometric mean of its token ratios, clipped as a whole, so
    l_t = -min(s_i A_i, clip(s_i, 1-ε_low, 1+ε_high) A_i) is the same for every token of row i. This is TRL's
    `importance_sampling_level="sequence"` exactly: the mean log-ratio over the mask (a row with no token
    gets log s = 0), differentiated through (no detached "GSPO-token" form: with one advantage per
    completion, GSPO-token, log s_it = sg(log s_i) + log π(o_t) - sg(log π(o_t)), has the same value and
    the same gradient under every reduction; the two differ only for per-token advantages [B, T], which
    here multiply the one row ratio as in TRL). GSPO's objective, 1/G Σ_i min(...), is
    reduction="sequence" (TRL's GSPO recipe uses loss_type="grpo"); "token"/"constant" weigh each row's
    sequence-level term by its length (TRL warns about the same). The paper's ε are ~1e-4 (3e-4 / 4e-4), not
    0.2: a sequence ratio drifts far less than a token one.

    `loss_type` — the per-token term l_t (before β k3_t and c_t), with TRL's names (w the token ratio, or
    GSPO's s_i with importance_level="sequence"):
      "grpo":  -min(w A, clip(w, 1 - ε_low, 1 + ε_high) A), as above.
      "bnpo":  the same term; TRL's "bnpo" is it with the token mean over the (micro-)batch, so it requires
               reduction="token" (checked).
      "cispo": -sg(min(w, 1 + ε_high)) A log π(o_t) (MiniMax-M1, MiniMax 2025, arXiv:2506.13585:
               the importance weight is clipped and detached, never the token, so every token keeps a
               gradient). TRL's `epsilon_high` for CISPO is the cap itself: TRL ε_high = 5 is ε_high = 4 here.
      "sapo":  -(4/τ) σ(τ (w - 1)) A, τ = τ_pos if A > 0 else τ_neg (Qwen team 2025, SAPO, arXiv:2511.20347:
               a smooth gate in place of the hard clip; its gradient at w = 1 is that of w A; TRL's
               sapo_temperature_pos / _neg, 1.0 / 1.05 by default: `sapo_temperatures`).
      "gmpo":  -A_i exp(1/|o_i| Σ_t sgn(A_i) min(sgn(A_i) log w_t, clip(sgn(A_i) log w_t, -ε_low, ε_high)))
               for every token of row i (GMPO, arXiv:2507.20673: the geometric mean of the
               token ratios, each clipped in log space; the paper's range is (e^-0.4, e^0.4)); [B] advantages
               and importance_level="token" only.

    `reduction` — where the papers differ:
      "sequence" (default): mean over sequences of each one's token mean, the GRPO paper's 1/G Σ 1/|o_i| Σ_t
                 (TRL's loss_type="grpo"); rows with no token are left out.
      "token":   token mean over the whole batch (DAPO, Yu et al. 2025; TRL's "bnpo"/"dapo").
      "constant": sum / (B·T) (Dr. GRPO; TRL's "dr_grpo" with T = max completion length: the rollouts pad
                 to rollout.max_new_tokens, so T is that).
    `clip_eps_high` (DAPO's clip-higher) defaults to `clip_eps`.

    `weights` ([B], no gradient; None = all 1) weighs rows in every reduction (see `reduce_tokens`): a row of
    weight 0 adds nothing to the numerator nor to the denominator (token count, row count, or B in B·T), so
    it is exactly as if it were not in the batch. It carries DAPO's dynamic sampling under static shapes:
    `weights=nonconstant_groups(rewards, G)`. The metrics count only rows of weight ≠ 0.

    Args:
      logprobs: [B, T] token log-probs of the current policy.
      old_logprobs: [B, T] log-probs of the sampling policy (no gradient; with one update per batch pass
        `stop_gradient(logprobs)`, making the ratio 1 in value but not in gradient).
      ref_logprobs: [B, T] reference log-probs (no gradient), or None when beta = 0.
      advantages: [B] per-completion (from `group_advantages`) or [B, T] (no gradient).
      mask: [B, T] 0/1 completion mask.
      clip_eps: ε_low.
      beta: KL coefficient β.
      reduction: "sequence" | "token" | "constant".
      clip_eps_high: ε_high, or None for ε_low.
      importance_level: "token" (GRPO) | "sequence" (GSPO).
      weights: [B] per-row weights (DAPO's dynamic-sampling mask), or None.
      token_weights: [B, T] weights of each token's clipped term (no gradient): a stale rollout's importance
        correction (`losses.importance_weights`), or None.
      loss_type: "grpo" | "bnpo" | "cispo" | "sapo" | "gmpo" (above).
      sapo_temperatures: (τ_pos, τ_neg) of "sapo".

    Returns:
      (loss, metrics): `kl` (token mean of k3, when ref_logprobs is given), `clip_ratio/low_mean`,
      `clip_ratio/high_mean`, `clip_ratio/region_mean` (fractions clipped below with A < 0, above with A > 0,
      either; TRL's definitions: of tokens, or with importance_level="sequence" and [B] advantages, of rows
      with a token).
    """
    if ref_logprobs is None and not (isinstance(beta, (int, float)) and beta == 0):
        raise ValueError("grpo_loss: ref_logprobs is None but beta != 0")
    if importance_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"importance_level={importance_level!r}: expected one of {IMPORTANCE_LEVELS}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: expected one of {LOSS_TYPES}")
    if loss_type == "bnpo" and reduction != "token":
        raise ValueError(
            f"loss_type='bnpo' is the token mean over the batch: reduction must be 'token', not {reduction!r}"
        )
    if loss_type == "gmpo" and (importance_level != "token" or jnp.ndim(advantages) != 1):
        raise ValueError("loss_type='gmpo' takes token ratios (importance_level='token') and [B] advantages")
    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    lp = f32(logprobs)
    if lp.ndim != 2 or f32(old_logprobs).shape != lp.shape or jnp.shape(mask) != lp.shape:
        raise ValueError(
            f"grpo_loss: logprobs {lp.shape}, old_logprobs {jnp.shape(old_logprobs)}, mask "
            f"{jnp.shape(mask)}: expected the same [B, T]"
        )
    if weights is not None and jnp.shape(weights) != lp.shape[:1]:
        raise ValueError(
            f"grpo_loss: weights of shape {jnp.shape(weights)}: expected one per row, {lp.shape[:1]}"
        )
    m = f32(mask)
    old = jax.lax.stop_gradient(f32(old_logprobs))
    adv_in = jax.lax.stop_gradient(f32(advantages))
    adv = broadcast_to_tokens(adv_in, lp)
    log_ratio = lp - old
    if importance_level == "token":
        log_w = log_ratio  # [B, T]
    else:
        log_w = masked_mean(log_ratio, m, axis=-1)[:, None]  # [B, 1]: GSPO's s_i in log space
    ratio = jnp.exp(log_w)
    if loss_type == "cispo":  # the detached, clipped importance weight times the REINFORCE term
        per_token = -jax.lax.stop_gradient(jnp.minimum(ratio, 1.0 + eps_high)) * adv * lp
    elif loss_type == "sapo":  # a sigmoid gate, steeper for negative advantages
        tau = jnp.where(adv > 0, sapo_temperatures[0], sapo_temperatures[1])
        per_token = -(4.0 / tau) * jax.nn.sigmoid(tau * (ratio - 1.0)) * adv
    elif loss_type == "gmpo":  # one geometric-mean ratio per row, its log-ratios clipped token by token
        sgn = jnp.sign(adv_in)[:, None]
        x = sgn * log_ratio
        clipped = sgn * jnp.minimum(x, jnp.clip(x, -eps_low, eps_high))
        row = -adv_in * jnp.exp(masked_mean(clipped, m, axis=-1))  # [B]
        per_token = jnp.broadcast_to(row[:, None], lp.shape)
    else:  # "grpo", "bnpo": the clipped ratio
        per_token = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)  # [B, T]
    if token_weights is not None:
        per_token = per_token * jax.lax.stop_gradient(f32(token_weights))
    # Metrics count the kept rows (weight ≠ 0), unweighted.
    token_mask = m if weights is None else m * f32(jnp.asarray(weights) != 0)[:, None]
    metrics = {}
    if ref_logprobs is not None:
        ref = jax.lax.stop_gradient(f32(ref_logprobs))
        kl = kl_penalty(lp, ref, "k3")  # [B, T]
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl, token_mask)
    loss = reduce_tokens(per_token, m, reduction, weights=weights)
    if importance_level == "sequence" and adv_in.ndim == 1:
        # One ratio and one advantage per row: TRL counts clipped rows.
        r, a = ratio[:, 0], adv_in
        count_mask = f32(jnp.sum(token_mask, axis=-1) > 0)  # rows with a kept token
    else:
        r, a, count_mask = ratio, adv, token_mask
    # GMPO clips log-ratios: its band is (e^-ε_low, e^ε_high).
    lo, hi = (
        (jnp.exp(-eps_low), jnp.exp(eps_high)) if loss_type == "gmpo" else (1.0 - eps_low, 1.0 + eps_high)
    )
    low = (r < lo) & (a < 0)
    high = (r > hi) & (a > 0)
    metrics.update(
        {
            "clip_ratio/low_mean": masked_mean(f32(low), count_mask),
            "clip_ratio/high_mean": masked_mean(f32(high), count_mask),
            "clip_ratio/region_mean": masked_mean(f32(low | high), count_mask),
        }
    )
    return loss, stop(metrics)


def nonconstant_groups(rewards: Array, group_size: int) -> Array:
    """DAPO's dynamic-sampling filter (Yu et al. 2025, sec. 3.2: keep prompts with 0 < #correct < G) as a mask.

        keep_i = 1 if the rewards of i's group are not all equal (max ≠ min), else 0

    A group whose rewards are all equal has zero advantage for every member (`group_advantages`,
    `rloo_advantages`: exactly 0), so it contributes no policy gradient, only KL (β > 0) and denominator.

    Meant as `grpo_loss(..., weights=nonconstant_groups(rewards, G))`. DAPO drops such groups and keeps
    sampling until the batch is full of informative groups ("drop and resample"); static shapes forbid
    resampling, so here they are only dropped: the loss and its normalisation are those of the batch
    without them (a weight-0 row counts in neither numerator nor denominator), but the effective batch
    shrinks and varies step to step (noisier gradient; if every group is constant the loss and gradient are
    0, yet a stateful optimiser such as Adam still moves the parameters with its momentum), and the sampling
    spent on dropped groups is not recovered. Log `mean(keep)` to see how much is dropped.

    Args:
      rewards: [B] the rewards to filter on, groups contiguous. DAPO's condition is on accuracy (the task
        reward), not on the shaped reward: with `overlong_penalty` added, an all-correct group of
        different lengths would no longer be constant and would be kept.
      group_size: G.

    Returns:
      [B] float32 0/1 mask, constant within each group.
    """
    g = _grouped(rewards, group_size)
    keep = jnp.logical_not(_constant(g))  # [B/G, 1]
    return f32(jnp.broadcast_to(keep, g.shape)).reshape(-1)


def overlong_penalty(lengths: Array, *, max_length: int, cache_length: int, penalty: float = 1.0) -> Array:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), as TRL's `get_soft_overlong_punishment`
    (max_completion_len = max_length, soft_punish_cache = cache_length), scaled by `penalty`:

        R(L) = 0                                     L ≤ L_max - L_cache
        R(L) = penalty · ((L_max - L_cache) - L) / L_cache     L_max - L_cache < L ≤ L_max
        R(L) = -penalty                              L > L_max

    Continuous at both ends (R(L_max) = -penalty). A reward, added to the task reward before the group
    advantages. With L_cache = 0 it is the hard step 0 / -penalty. Rollouts stop at max_new_tokens, so with
    L_max = max_new_tokens the last branch is never reached and a truncated completion (L = L_max) gets
    -penalty from the ramp. DAPO: L_max = 20480, L_cache = 4096 (penalty 1).

    Args:
      lengths: [B] completion lengths in tokens (e.g. `mask.sum(-1)`), any numeric dtype.
      max_length: L_max.
      cache_length: L_cache, 0 ≤ L_cache ≤ L_max.
      penalty: scale of the punishment (1 in the paper and TRL).

    Returns:
      [B] float32 rewards in [-penalty, 0].
    """
    if not 0 <= cache_length <= max_length:
        raise ValueError(
            f"overlong_penalty: cache_length={cache_length}, max_length={max_length}: "
            "expected 0 <= cache_length <= max_length"
        )
    length = f32(lengths)
    if length.ndim != 1:
        raise ValueError(f"overlong_penalty: lengths of shape {length.shape}: expected [B]")
    start = float(max_length - cache_length)
    if cache_length == 0:
        ramp = jnp.zeros_like(length)
    else:
        ramp = (start - length) / float(cache_length)
    r = jnp.where(length <= start, 0.0, jnp.where(length <= float(max_length), ramp, -1.0))
    return penalty * r
