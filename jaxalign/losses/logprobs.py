"""Token and sequence log-probabilities from logits.

Convention: `logits[b, t]` predicts `targets[b, t]` (callers shift), masks are 0/1 arrays of the targets'
shape, and a sequence log-prob is the masked sum of its token log-probs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.losses._utils import f32, masked_sum

Array = jax.Array


def _logsumexp_f32(logits: Array) -> Array:
    """logsumexp over the vocabulary, in float32, [..., V] -> [...].

    The upcast sits inside the reduction, so XLA fuses convert -> subtract max -> exp -> sum and never
    writes a float32 copy of a bf16 [B, T, V] array. The max is taken out first so exp cannot overflow.
    """
    m = jnp.max(logits, axis=-1, keepdims=True).astype(jnp.float32)
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # an all -inf row stays -inf, not NaN
    s = jnp.sum(jnp.exp(logits.astype(jnp.float32) - m), axis=-1)
    return jnp.log(s) + m[..., 0]


def _safe_targets(targets: Array, vocab: int) -> Array:
    """Negative targets (an ignore index such as -100) read token 0: the caller masks those positions."""
    return jnp.clip(targets.astype(jnp.int32), 0, vocab - 1)


def _forward(logits: Array, targets: Array) -> tuple[Array, Array]:
    idx = _safe_targets(targets, logits.shape[-1])
    # The barrier keeps XLA from hoisting a float32 convert of the whole logits array above the gather and
    # sharing it with the logsumexp (which would materialise it): only the gathered [B, T] values are upcast.
    gathered = jnp.take_along_axis(jax.lax.optimization_barrier(logits), idx[..., None], axis=-1)[..., 0]
    lse = _logsumexp_f32(logits)
    return gathered.astype(jnp.float32) - lse, lse


@jax.custom_vjp
def _logprobs_and_lse(logits: Array, targets: Array) -> tuple[Array, Array]:
    return _forward(logits, targets)


def _logprobs_and_lse_fwd(logits, targets):
    logprobs, lse = _forward(logits, targets)
    return (logprobs, lse), (logits, targets, lse)


def _logprobs_and_lse_bwd(residuals, cotangents):
    """d logp_t / d logits = onehot(y_t) - softmax,  d lse / d logits = softmax: one fused elementwise pass
    (no scatter into a float32 zero array, no stored softmax), written in the logits' dtype."""
    logits, targets, lse = residuals
    g_logp, g_lse = cotangents  # [B, T] each
    logits = jax.lax.optimization_barrier(logits)  # do not share the forward's float32 convert
    probs = jnp.exp(logits.astype(jnp.float32) - lse[..., None])  # [B, T, V], fused
    vocab_ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    onehot = vocab_ids == _safe_targets(targets, logits.shape[-1])[..., None]
    d_logits = jnp.where(onehot, g_logp[..., None], 0.0) + (g_lse - g_logp)[..., None] * probs
    return d_logits.astype(logits.dtype), np.zeros(targets.shape, jax.dtypes.float0)


_logprobs_and_lse.defvjp(_logprobs_and_lse_fwd, _logprobs_and_lse_bwd)


@jax.jit
def token_logprobs_and_lse(logits: Array, targets: Array) -> tuple[Array, Array]:
    """(log p(targets), logsumexp(logits)), both [B, T] float32; the second feeds the z-loss.

    Reverse-mode differentiable (custom VJP); forward-mode (jvp) is not defined.
    """
    return _logprobs_and_lse(logits, targets)


def token_logprobs(logits: Array, targets: Array) -> Array:
    """Log-probability of each target token.

        log p(y_t) = logits[t, y_t] - logsumexp_v logits[t, v]

    Computed as a gather of the target logit minus a float32 logsumexp, never through a full
    log_softmax, so no second [B, T, V] float32 array is made (bf16 logits are upcast inside the fused
    reduction). A custom VJP writes the gradient, onehot(y) - softmax, in one fused pass in the logits'
    dtype (no scatter into float32 zeros, no stored softmax). Reverse mode only: `jax.jvp` is not defined.

    Args:
      logits: [B, T, V] float32 or bf16; `logits[b, t]` predicts `targets[b, t]`.
      targets: [B, T] int. Negative values (ignore index) are read as token 0 and must be masked by the caller.

    Returns:
      [B, T] float32 log-probabilities.
    """
    return token_logprobs_and_lse(logits, targets)[0]


class TokenStats(NamedTuple):
    """Per-token results of the LM head, each [B, T]: log p(target) float32, logsumexp float32 (for the
    z-loss) and whether the target is the argmax (for accuracy metrics)."""

    logprobs: Array
    lse: Array
    is_argmax: Array


def token_stats(logits: Array, targets: Array) -> TokenStats:
    """`TokenStats` from full logits [B, T, V] (see `token_logprobs`)."""
    lp, lse = token_logprobs_and_lse(logits, targets)
    return TokenStats(lp, lse, jnp.argmax(logits, axis=-1) == targets)


def auto_chunk(batch: int, length: int, vocab: int, budget: int = 1 << 26) -> int:
    """Tokens per row in one chunk of `chunked_token_stats`: the largest power of two (>= 8, <= length)
    with batch * chunk * vocab <= budget elements (2^26 float32 = 256 MiB of logits at a time)."""
    c = 8
    while c * 2 <= length and batch * c * 2 * vocab <= budget:
        c *= 2
    return c


def chunked_token_stats(
    hidden: Array, head: Array, targets: Array, chunk: int, dtype=None, softcap: float = 0.0
) -> TokenStats:
    """`TokenStats` of the LM head without ever holding the logits [B, T, V], forward or backward.

        logits[b, t] = hidden[b, t] @ head          (float32 accumulation; with `softcap` c > 0,
                                                     c · tanh(logits / c), Gemma 2's final soft-cap)
        log p(y_bt) = logits[b, t, y_bt] - logsumexp_v logits[b, t, v]

    The positions are taken `chunk` at a time along T (the batch axis, usually sharded, stays whole): a
    `lax.scan` computes each chunk's logits [B, chunk, V], reduces them to the three [B, chunk] results and
    drops them; `jax.checkpoint` makes the backward pass recompute them chunk by chunk as well, so the
    peak is one chunk's logits instead of the whole [B, T, V] array (at V = 128k and T = 2048 that is
    1 GiB per sequence in float32). Equal to `token_stats(hidden @ head, targets)` (tested with gradients).

    Args:
      hidden: [B, T, D] final-norm hidden states.
      head: [D, V] output projection (an untied `lm_head` kernel, or the transposed tied embedding).
      targets: [B, T] int; negative values read token 0 and must be masked by the caller.
      chunk: positions per chunk (T is padded up to a multiple of it); see `auto_chunk`.
      dtype: compute dtype of the projection (default: the hidden states' dtype).
      softcap: the model's final logit soft-cap (0 = none).

    Returns:
      TokenStats, each [B, T].
    """
    b, t, d = hidden.shape
    dtype = dtype or hidden.dtype
    n = -(-t // chunk)
    pad = n * chunk - t
    x = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))) if pad else hidden
    y = jnp.pad(targets, ((0, 0), (0, pad))) if pad else targets
    xs = x.reshape(b, n, chunk, d).swapaxes(0, 1)  # [n, B, c, D]
    ys = y.reshape(b, n, chunk).swapaxes(0, 1)  # [n, B, c]

    @jax.checkpoint
    def one(w, xc, yc):
        logits = jnp.dot(xc.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
        if softcap:
            logits = softcap * jnp.tanh(logits / softcap)
        lp, lse = _logprobs_and_lse(logits, yc)
        return lp, lse, jnp.argmax(logits, axis=-1) == yc

    def body(carry, inputs):
        return carry, one(head, *inputs)

    _, out = jax.lax.scan(body, None, (xs, ys))
    return TokenStats(*(o.swapaxes(0, 1).reshape(b, n * chunk)[:, :t] for o in out))


def sequence_sums(token_logps: Array, mask: Array, average: bool = False) -> Array:
    """[B] masked sums (average=True: means) of token log-probs [B, T]; see `sequence_logprobs`."""
    total = masked_sum(token_logps, mask, axis=-1)
    if average:
        total = total / jnp.maximum(jnp.sum(f32(mask), axis=-1), 1.0)
    return total


def packed_sequence_sums(
    token_logps: Array, mask: Array, sequence_ids: Array, num_sequences: int, average: bool = False
) -> Array:
    """[S] per-sequence masked sums (means) of token log-probs [R, T] of packed rows; see
    `packed_sequence_logprobs`."""
    m = f32(mask)
    ids = sequence_ids.reshape(-1)
    total = jax.ops.segment_sum(
        jnp.where(m != 0, token_logps, 0.0).reshape(-1) * m.reshape(-1), ids, num_segments=num_sequences
    )
    if average:
        total = total / jnp.maximum(jax.ops.segment_sum(m.reshape(-1), ids, num_segments=num_sequences), 1.0)
    return total


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
    return sequence_sums(token_logprobs(logits, targets), mask, average)


def packed_sequence_logprobs(
    logits: Array, targets: Array, mask: Array, sequence_ids: Array, num_sequences: int, average: bool = False
) -> Array:
    """Sequence log-probabilities of sequences packed several to a row (padding-free batches).

        log p(y_s) = sum_{(b,t): sequence_ids[b,t] = s} m_bt log p(y_bt)
        avg log p(y_s) = log p(y_s) / max(sum_{sequence_ids = s} m, 1)          (average=True)

    Equal to `sequence_logprobs` of the same sequences each in its own row (the model keeps packed
    sequences apart with segment ids; the sum only regroups the tokens).

    Args:
      logits: [R, T, V] float32 or bf16, rows holding several sequences.
      targets: [R, T] int.
      mask: [R, T] 0/1, 1 on completion tokens (0 on padding).
      sequence_ids: [R, T] int, the index in [0, num_sequences) of the sequence each token belongs to
        (any value in range on padding, whose mask is 0).
      num_sequences: S, static.
      average: divide by each sequence's number of unmasked tokens.

    Returns:
      [S] float32.
    """
    return packed_sequence_sums(token_logprobs(logits, targets), mask, sequence_ids, num_sequences, average)


def token_entropy(logits: Array) -> Array:
    """Entropy of each position's next-token distribution, in nats, float32, no gradient:

        H_t = -sum_v p_v log p_v,   p = softmax(logits[t])

    Args:
      logits: [B, T, V].

    Returns:
      [B, T] float32 (a metric: the gradient is stopped).
    """
    logits = jax.lax.stop_gradient(logits).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def token_mean_nll(sequence_logps: Array, num_tokens: Array, average: bool = False) -> Array:
    """Token-mean negative log-likelihood over a batch of sequences, from their sequence log-probs:

        NLL = -sum_i S_i / max(sum_i n_i, 1),   S_i = log p(y_i)          (average=False: summed)
                                                S_i = n_i · avg log p(y_i) (average=True: length-averaged)

    (the RPO term of DPO and ORPO's SFT term, on the chosen completions).

    Args:
      sequence_logps: [B] sequence log-probs, summed or (average=True) length-averaged.
      num_tokens: [B] completion tokens of each sequence.
      average: whether `sequence_logps` are length-averaged.

    Returns:
      float32 scalar.
    """
    n = f32(num_tokens)
    total = f32(sequence_logps) * n if average else f32(sequence_logps)
    return -jnp.sum(total) / jnp.maximum(jnp.sum(n), 1.0)


def scatter_positions(values: Array, index: Array, length: int) -> Array:
    """[R, K] values of the positions `index` [R, K] back in [R, length] rows, zero (False) at every other
    position; an index >= `length` marks an unused slot (dropped). Differentiable in `values` (the
    gradient is the gather). See `jaxalign.data.batching.head_index`."""
    r, _ = values.shape
    rows = jnp.arange(r)[:, None]
    return jnp.zeros((r, length), values.dtype).at[rows, index].set(values, mode="drop")
