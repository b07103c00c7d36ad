"""Token sampling: greedy, temperature, top-k and top-p (nucleus), as pure functions of logits.

The sampling distribution for logits `z` [B, V] is

    p(v) ∝ exp(z_v / temperature)   for v in the kept set, 0 elsewhere,

where the kept set is the `top_k` largest logits (all of them when `top_k == 0`), then, of those, the
smallest prefix in descending order whose probability mass reaches `top_p` (Holtzman et al., 2019,
"The Curious Case of Neural Text Degeneration"). `temperature == 0` is greedy decoding (argmax of the raw
logits; top-k/top-p do not change the argmax).

`temperature`, `top_k` and `top_p` are Python numbers read at trace time (they pick the code path and the
static size of `lax.top_k`); a change of any of them recompiles the caller.

Ties: a logit equal to the k-th largest (or to the top-p cut-off) is kept, so with exact ties the kept
set can be larger than k; with float logits from a model ties are measure-zero.
"""

import jax
import jax.numpy as jnp


def _check(temperature, top_k, top_p):
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def process_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
    """Logits of the sampling distribution: `log_softmax` of the result is its log-probabilities.

    Args:
      logits: [..., V] raw model logits (any float dtype; computed in float32).
      temperature: > 0 divides the logits (greedy, 0, is handled by `sample_token`; here it is treated
        as 1 so that the result is still a distribution).
      top_k: keep only the k largest logits (0 = all).
      top_p: keep the smallest set of largest-probability tokens whose mass is >= top_p (1 = all).

    Returns:
      [..., V] float32 logits, -inf outside the kept set.
    """
    _check(temperature, top_k, top_p)
    # float32: a bfloat16 softmax over a large vocabulary loses the tail that top-p sums over.
    logits = logits.astype(jnp.float32)
    if temperature > 0:
        logits = logits / temperature
    vocab = logits.shape[-1]
    neg_inf = jnp.finfo(jnp.float32).min
    sorted_desc = None
    if 0 < top_k < vocab:
        # lax.top_k returns values in descending order: reused below so top-p sorts k values, not V.
        sorted_desc, _ = jax.lax.top_k(logits, top_k)
        logits = jnp.where(logits < sorted_desc[..., -1:], neg_inf, logits)
    if top_p < 1.0:
        if sorted_desc is None:
            sorted_desc = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        # Keep a token if the mass strictly before it is < top_p: the first token is always kept.
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, neg_inf, logits)
    return logits


def sample_token(logits, rng, temperature=1.0, top_k=0, top_p=1.0):
    """Draws one token per row.

    Args:
      logits: [B, V] raw model logits.
      rng: a PRNG key (unused when `temperature == 0`).
      temperature, top_k, top_p: see `process_logits`; `temperature == 0` is greedy (argmax).

    Returns:
      [B] int32 token ids.
    """
    if temperature == 0:
        _check(temperature, top_k, top_p)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, process_logits(logits, temperature, top_k, top_p), axis=-1).astype(
        jnp.int32
    )


def sample_token_with_logprobs(logits, rng, temperature=1.0, top_k=0, top_p=1.0):
    """`sample_token` plus the chosen tokens' log-probabilities under two distributions.

    Returns:
      tokens: [B] int32.
      sampling_logprobs: [B] float32, log p(token) under the sampling distribution (tempered and
        truncated by top-k/top-p); 0 for greedy, whose distribution is a point mass.
      model_logprobs: [B] float32, log_softmax(logits)[token]: the untempered, untruncated model
        distribution (temperature 1), i.e. the policy's log-probability that RL objectives use.
    """
    logits = logits.astype(jnp.float32)
    model_lp = jax.nn.log_softmax(logits, axis=-1)
    if temperature == 0:
        tokens = sample_token(logits, rng, 0.0, top_k, top_p)
        sampling_lp = jnp.zeros(tokens.shape, jnp.float32)
    else:
        processed = process_logits(logits, temperature, top_k, top_p)
        tokens = jax.random.categorical(rng, processed, axis=-1).astype(jnp.int32)
        sampling_lp = _take(jax.nn.log_softmax(processed, axis=-1), tokens)
    return tokens, sampling_lp, _take(model_lp, tokens)


def _take(logprobs, tokens):
    return jnp.take_along_axis(logprobs, tokens[..., None], axis=-1)[..., 0]


def sample_token_by_inverse_cdf(logits, uniforms, temperature=1.0, top_k=0, top_p=1.0):
    """`sample_token_with_logprobs` with one uniform number per row instead of a key.

    The token is the first v whose cumulative probability exceeds u · (total mass): inverse-CDF sampling,
    an exact draw from the same distribution as `jax.random.categorical` (which draws V Gumbel numbers a
    row: on a CPU at vocabulary 1024 that was a fifth of the decode step). Tokens outside the top-k / top-p
    set have probability 0, add nothing to the cumulative sum, and are never chosen.

    Args:
      logits: [B, V] raw model logits.
      uniforms: [B] float32 in [0, 1).
      temperature: > 0 (greedy has no draw: use `sample_token_with_logprobs`).
    Returns:
      tokens [B] int32, sampling_logprobs [B] float32, model_logprobs [B] float32 (as
      `sample_token_with_logprobs`).
    """
    if not temperature > 0:
        raise ValueError(f"inverse-CDF sampling needs temperature > 0, got {temperature}")
    logits = logits.astype(jnp.float32)
    model_lp = jax.nn.log_softmax(logits, axis=-1)
    if temperature == 1.0 and top_k == 0 and top_p == 1.0:  # the policy itself (RL's default)
        sampling_lp = model_lp
    else:
        sampling_lp = jax.nn.log_softmax(process_logits(logits, temperature, top_k, top_p), axis=-1)
    cdf = jnp.cumsum(jnp.exp(sampling_lp), axis=-1)  # [B, V]
    x = uniforms.astype(jnp.float32)[:, None] * cdf[:, -1:]
    tokens = jnp.minimum(jnp.sum(cdf <= x, axis=-1), logits.shape[-1] - 1).astype(jnp.int32)
    return tokens, _take(sampling_lp, tokens), _take(model_lp, tokens)
