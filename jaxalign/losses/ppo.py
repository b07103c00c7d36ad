"""PPO: clipped policy loss, clipped value loss, generalised advantage estimation, whitening."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._utils import broadcast_to_tokens, f32, masked_mean, reduce_tokens, stop

Array = jax.Array


def ppo_clip_loss(
    logprobs: Array,
    old_logprobs: Array,
    advantages: Array,
    mask: Array,
    *,
    clip_eps: float = 0.2,
    reduction: str = "token",
    token_weights: Array | None = None,
) -> tuple[Array, dict]:
    """PPO's clipped surrogate objective per token (Schulman et al. 2017, eq. 7), as TRL's PPO trainer.

        ρ_t = exp(log π(a_t) - log π_old(a_t))
        l_t = c_t max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε))       (c_t = token_weights, else 1)
        L   = reduce(l, mask)

    `reduction` (see `reduce_tokens`): "token" = token mean over the batch (TRL, DAPO), "sequence" = mean of
    per-sequence means, "constant" = sum / (B·T).

    Args:
      logprobs: [B, T] token log-probs of the current policy.
      old_logprobs: [B, T] token log-probs of the policy that sampled (no gradient).
      advantages: [B, T] per-token advantages, or [B] per-sequence (broadcast over tokens). No gradient.
      mask: [B, T] 0/1, 1 on generated tokens.
      clip_eps: ε.
      reduction: "token" | "sequence" | "constant".
      token_weights: [B, T] weights of each token's term (no gradient): a stale rollout's importance
        correction (`losses.importance_weights`), or None.

    Returns:
      (loss, metrics): `loss/policy`, `policy/clipfrac` (fraction of tokens where the clip binds: ρ > 1 + ε
      with A > 0 or ρ < 1 − ε with A < 0, which is where TRL's "clipped term is the larger" holds in exact
      arithmetic; written this way it is not decided by rounding where the two terms are equal),
      `policy/approxkl` = mean 0.5 (log π - log π_old)^2 (TRL's estimate; a
      second-order estimator of KL(π_old || π)), `policy/ratio` (mean ρ).
    """
    lp = f32(logprobs)
    old = jax.lax.stop_gradient(f32(old_logprobs))
    adv = jax.lax.stop_gradient(broadcast_to_tokens(advantages, lp))
    log_ratio = lp - old
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = jnp.maximum(unclipped, clipped)  # [B, T]
    if token_weights is not None:  # a stale rollout's importance correction (losses.importance_weights)
        per_token = per_token * jax.lax.stop_gradient(f32(token_weights))
    loss = reduce_tokens(per_token, mask, reduction)
    metrics = {
        "loss/policy": loss,
        "policy/clipfrac": masked_mean(
            f32(((ratio > 1.0 + clip_eps) & (adv > 0)) | ((ratio < 1.0 - clip_eps) & (adv < 0))), mask
        ),
        "policy/approxkl": masked_mean(0.5 * jnp.square(log_ratio), mask),
        "policy/ratio": masked_mean(ratio, mask),
    }
    return loss, stop(metrics)


def value_loss(
    values: Array, old_values: Array, returns: Array, mask: Array, *, clip_eps: float = 0.2
) -> tuple[Array, dict]:
    """Clipped value loss, as OpenAI baselines' PPO2 and TRL's PPO trainer.

        V_clip = old_V + clip(V - old_V, -ε, ε)
        L = 0.5 * token_mean( max((V - R)^2, (V_clip - R)^2) )

    Args:
      values: [B, T] current value predictions.
      old_values: [B, T] value predictions at sampling time (no gradient).
      returns: [B, T] return targets (e.g. from `gae`; no gradient).
      mask: [B, T] 0/1.
      clip_eps: ε, in the value's units (TRL's `cliprange_value`).

    Returns:
      (loss, metrics): `loss/value`, `val/clipfrac` (fraction of tokens where the clip binds: |V − old_V| > ε
      and the clipped error is the larger; where |V − old_V| ≤ ε the two errors are equal in exact
      arithmetic, and rounding must not decide the count),
      `val/vpred` (mean prediction), `val/error` (mean squared error of the unclipped prediction).
    """
    v = f32(values)
    old = jax.lax.stop_gradient(f32(old_values))
    ret = jax.lax.stop_gradient(f32(returns))
    v_clipped = old + jnp.clip(v - old, -clip_eps, clip_eps)
    err = jnp.square(v - ret)
    err_clipped = jnp.square(v_clipped - ret)
    loss = 0.5 * masked_mean(jnp.maximum(err, err_clipped), mask)
    metrics = {
        "loss/value": loss,
        "val/clipfrac": masked_mean(f32((jnp.abs(v - old) > clip_eps) & (err_clipped > err)), mask),
        "val/vpred": masked_mean(v, mask),
        "val/error": masked_mean(err, mask),
    }
    return loss, stop(metrics)


def gae(
    rewards: Array, values: Array, mask: Array, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Array, Array]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over the last axis, by a reverse scan.

        δ_t = r_t + γ V_{t'} - V_t,         t' = the next unmasked position after t (V = 0 past the last one)
        A_t = δ_t + γλ A_{t'}               (A = 0 past the last unmasked position)
        R_t = A_t + V_t                     (the value target)

    Masked positions are skipped, as if absent: their rewards and values are ignored, they get A = R = 0,
    and bootstrapping jumps over them (a gap of padding between two tokens costs no discount). So right
    padding ends the episode at the last real token and left padding or masked-out tool output in the middle
    changes nothing. Put a sequence-level reward on the last *unmasked* token. λ = 1, γ = 1 gives reward-to-go
    minus value. TRL's PPO zeroes padded values and rewards and runs the plain recursion, which agrees for
    right padding; TRL then whitens A (see `whiten`), which this function does not.

    Args:
      rewards: [..., T] per-token rewards (e.g. the score on the last token minus a KL penalty per token).
      values: [..., T] value predictions.
      mask: [..., T] 0/1.
      gamma: discount γ.
      lam: GAE λ.

    Returns:
      (advantages, returns), each [..., T] float32, zero at masked positions.
    """
    r, v, m = f32(rewards), f32(values), f32(mask)
    m = (m != 0).astype(jnp.float32)
    # Scan over time: move T to the front ([T, ...]) and walk it backwards.
    r_t, v_t, m_t = (jnp.moveaxis(x, -1, 0) for x in (r, v, m))

    def step(carry, x):
        next_value, next_adv = carry  # [...] each
        r_i, v_i, m_i = x
        delta = r_i + gamma * next_value - v_i
        adv = delta + gamma * lam * next_adv
        # A masked position passes the carry through untouched and reports zero.
        carry = (jnp.where(m_i > 0, v_i, next_value), jnp.where(m_i > 0, adv, next_adv))
        return carry, m_i * adv

    zeros = jnp.zeros(r_t.shape[1:], jnp.float32)
    _, adv_t = jax.lax.scan(step, (zeros, zeros), (r_t, v_t, m_t), reverse=True)
    advantages = jnp.moveaxis(adv_t, 0, -1)
    return advantages, (advantages + v) * m


def whiten(x: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
    """(x - mean) / sqrt(var + eps) over the unmasked entries, as TRL's `masked_whiten` (unbiased variance).
    `shift_mean=False` adds the mean back (whitens the scale only). Masked entries come back as whatever the
    formula gives; mask them again downstream."""
    x, m = f32(x), f32(mask)
    mean = masked_mean(x, m)
    n = jnp.sum(m)
    var = masked_mean(jnp.square(x - mean), m) * n / jnp.maximum(n - 1.0, 1.0)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    return out if shift_mean else out + mean


def explained_variance(pred: Array, target: Array, mask: Array) -> Array:
    """How much of the returns' variance the critic explains, over the masked entries:

        EV = 1 - Var(target - pred) / Var(target)       (1 = perfect critic, <= 0 = useless)

    Args:
      pred, target, mask: [B, T] (values, returns, 0/1 mask).

    Returns:
      float32 scalar (Var(target) is floored at 1e-8).
    """

    def var(x):
        mean = masked_mean(x, mask)
        return masked_mean(jnp.square(x - mean), mask)

    return 1.0 - var(f32(target) - f32(pred)) / jnp.maximum(var(f32(target)), 1e-8)


def token_rewards(score: Array, kl: Array, mask: Array, beta) -> Array:
    """Per-token PPO rewards for RLHF (Ziegler et al. 2019; Ouyang et al. 2022): a KL penalty at every
    generated token and the reward model's score at the last one,

        r_t = -beta · kl_t + [t = last generated token] · score

    Args:
      score: [B] sequence scores.
      kl: [B, T] per-token KL estimates (policy vs reference).
      mask: [B, T] 0/1 generated tokens (a row's last 1 receives the score; an empty row none).
      beta: the KL coefficient (scalar).

    Returns:
      [B, T] float32.
    """
    m = mask != 0
    lengths = jnp.sum(m, axis=-1)
    last = ((jnp.arange(mask.shape[1])[None, :] == (lengths - 1)[:, None]) & m).astype(jnp.float32)
    return -beta * f32(kl) + last * f32(score)[:, None]
