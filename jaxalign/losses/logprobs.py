"""Token and sequence log-probabilities from logits.

Convention: `logits[b, t]` predicts `targets[b, t]` (callers shift), masks are 0/1 arrays of the targets'
shape, and a sequence log-prob is the masked sum of its token log-probs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._utils import f32, masked_sum

Array = jax.Array


def _logsumexp_f32(logits: Array) -> Array:
    """logsumexp over the vocabulary, in float32, [..., V] -> [...].

    The upcast sits inside the reduction, so under jit XLA fuses convert -> subtract max -> exp -> sum and
    never writes a float32 copy of a bf16 [B, T, V] array. The max is taken out first (and held constant
    for differentiation) so exp cannot overflow.
    """
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True).astype(jnp.float32))
    m = jnp.where(jnp.isfinite(m), m, 0.0)                     # an all -inf row stays -inf, not NaN
    s = jnp.sum(jnp.exp(logits.astype(jnp.float32) - m), axis=-1)
    return jnp.log(s) + m[..., 0]


def _target_logits_f32(logits: Array, targets: Array) -> Array:
    """logits[..., targets] as float32 [...]. Negative targets (an ignore index such as -100) read token 0:
    those positions must be masked out by the caller."""
    idx = jnp.clip(targets.astype(jnp.int32), 0, logits.shape[-1] - 1)
    return jnp.take_along_axis(logits, idx[..., None], axis=-1)[..., 0].astype(jnp.float32)


@jax.jit
def token_logprobs_and_lse(logits: Array, targets: Array) -> tuple[Array, Array]:
    """(log p(targets), logsumexp(logits)), both [B, T] float32. The second feeds the z-loss."""
    lse = _logsumexp_f32(logits)
    return _target_logits_f32(logits, targets) - lse, lse


def token_logprobs(logits: Array, targets: Array) -> Array:
    """Log-probability of each target token.

        log p(y_t) = logits[t, y_t] - logsumexp_v logits[t, v]

    Computed as a gather of the target logit minus a float32 logsumexp, never through a full
    log_softmax, so no second [B, T, V] float32 array is made (bf16 logits are upcast inside the fused
    reduction).

    Args:
      logits: [B, T, V] float32 or bf16; `logits[b, t]` predicts `targets[b, t]`.
      targets: [B, T] int. Negative values (ignore index) are read as token 0 and must be masked by the caller.

    Returns:
      [B, T] float32 log-probabilities.
    """
    return token_logprobs_and_lse(logits, targets)[0]


def sequence_logprobs(logits: Array, targets: Array, mask: Array, average: bool = False) -> Array:
    """Sequence log-probability: the masked sum of token log-probs (or their masked mean).

        log p(y) = sum_t m_t log p(y_t)                  (average=False: DPO, KTO, the RL losses)
        avg log p(y) = sum_t m_t log p(y_t) / max(sum_t m_t, 1)   (average=True: IPO, ORPO, SimPO)

    Args:
      logits: [B, T, V] float32 or bf16.
      targets: [B, T] int.
      mask: [B, T] 0/1 (bool, int or float), 1 on completion tokens.
      average: divide by the number of unmasked tokens (an all-zero row gives 0, not NaN).

    Returns:
      [B] float32.
    """
    lp = token_logprobs(logits, targets)
    total = masked_sum(lp, mask, axis=-1)
    if average:
        total = total / jnp.maximum(jnp.sum(f32(mask), axis=-1), 1.0)
    return total
