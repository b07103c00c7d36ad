"""token_logprobs, sequence_logprobs, clm_loss, sft_loss against float64 NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.losses import clm_loss, sequence_logprobs, sft_loss, token_logprobs

B, T, V = 3, 5, 11


def _inputs(seed=0, b=B, t=T, v=V):
    rng = np.random.default_rng(seed)
    logits = (3.0 * rng.standard_normal((b, t, v))).astype(np.float32)
    targets = rng.integers(0, v, (b, t)).astype(np.int32)
    mask = (rng.random((b, t)) < 0.7).astype(np.float32)
    mask[:, 0] = 1.0
    return logits, targets, mask


def ref_token_logprobs(logits, targets):
    """log softmax by hand, one position at a time, in float64."""
    logits = np.asarray(logits, np.float64)
    out = np.zeros(targets.shape)
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            row = logits[b, t]
            out[b, t] = row[targets[b, t]] - (row.max() + np.log(np.sum(np.exp(row - row.max()))))
    return out


def ref_lse(logits):
    x = np.asarray(logits, np.float64)
    return x.max(-1) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1))


def ref_clm(logits, targets, mask, z_loss=0.0):
    lp = ref_token_logprobs(logits, targets)
    n = max(mask.sum(), 1.0)
    nll = -(lp * mask).sum() / n
    z = z_loss * (ref_lse(logits) ** 2 * mask).sum() / n
    acc = ((np.argmax(logits, -1) == targets) * mask).sum() / n
    return nll + z, {
        "nll": nll,
        "perplexity": np.exp(nll),
        "mean_token_accuracy": acc,
        "z_loss": z,
        "num_tokens": mask.sum(),
    }


def test_token_logprobs_matches_reference():
    logits, targets, _ = _inputs()
    np.testing.assert_allclose(
        jax.jit(token_logprobs)(logits, targets), ref_token_logprobs(logits, targets), rtol=1e-5, atol=1e-5
    )


def test_token_logprobs_large_logits_are_stable():
    logits, targets, _ = _inputs()
    logits = logits + 1e4  # a naive exp overflows
    got = token_logprobs(logits, targets)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref_token_logprobs(logits, targets), atol=2e-3)


def test_negative_targets_are_maskable():
    logits, targets, mask = _inputs()
    targets = targets.copy()
    targets[:, -1] = -100  # an ignore index at masked-out positions
    mask[:, -1] = 0.0
    got = sequence_logprobs(logits, targets, mask)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(
        got, (ref_token_logprobs(logits, np.maximum(targets, 0)) * mask).sum(-1), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logprobs(average):
    logits, targets, mask = _inputs(1)
    mask[1] = 0.0  # an all-masked row: 0, not NaN
    lp = ref_token_logprobs(logits, targets)
    want = np.array([sum(lp[b, t] for t in range(T) if mask[b, t]) for b in range(B)])
    if average:
        want = want / np.maximum(mask.sum(-1), 1)
    got = jax.jit(sequence_logprobs, static_argnames="average")(logits, targets, mask, average=average)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got[1] == 0.0


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_clm_loss_matches_reference(z_loss):
    logits, targets, mask = _inputs(2)
    loss, metrics = jax.jit(clm_loss, static_argnames="z_loss")(logits, targets, mask, z_loss=z_loss)
    want_loss, want_metrics = ref_clm(logits, targets, mask, z_loss)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert set(metrics) == set(want_metrics)
    for k in want_metrics:
        np.testing.assert_allclose(metrics[k], want_metrics[k], rtol=1e-5, atol=1e-6, err_msg=k)
        assert metrics[k].dtype == jnp.float32 and metrics[k].shape == ()
    assert loss.dtype == jnp.float32 and loss.shape == ()


def test_clm_loss_without_mask_counts_every_token():
    logits, targets, _ = _inputs(3)
    loss, metrics = clm_loss(logits, targets)
    np.testing.assert_allclose(loss, ref_clm(logits, targets, np.ones((B, T)))[0], rtol=1e-5)
    assert metrics["num_tokens"] == B * T


def test_clm_hand_checked_uniform_logits():
    """Uniform logits: nll = log V, perplexity = V."""
    logits = np.zeros((2, 4, V), np.float32)
    targets = np.ones((2, 4), np.int32)
    loss, metrics = clm_loss(logits, targets)
    np.testing.assert_allclose(loss, np.log(V), rtol=1e-6)
    np.testing.assert_allclose(metrics["perplexity"], V, rtol=1e-5)


def test_sft_loss_is_token_mean_over_the_batch():
    logits, targets, mask = _inputs(4)
    loss, metrics = sft_loss(logits, targets, mask)
    lp = ref_token_logprobs(logits, targets)
    want = -sum(lp[b, t] for b in range(B) for t in range(T) if mask[b, t]) / mask.sum()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    # Not the mean of per-sequence means (the two differ when lengths differ).
    per_seq = -(lp * mask).sum(-1) / mask.sum(-1)
    assert not np.isclose(want, per_seq.mean())
    assert "z_loss" not in metrics


def test_masked_out_row_and_padding_change_nothing():
    logits, targets, mask = _inputs(5)
    base = sft_loss(logits, targets, mask)
    rng = np.random.default_rng(9)
    extra_logits = np.concatenate([logits, 50 * rng.standard_normal((1, T, V)).astype(np.float32)])
    extra = sft_loss(
        extra_logits, np.concatenate([targets, targets[:1]]), np.concatenate([mask, np.zeros((1, T))])
    )
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(extra)):
        np.testing.assert_allclose(a, b, rtol=1e-5)  # sums of 15 vs 20 terms: a few ulps apart
    # Changing logits or targets at masked-out positions changes nothing either.
    logits2 = np.where(mask[..., None] == 0, 123.0, logits).astype(np.float32)
    targets2 = np.where(mask == 0, 0, targets)
    np.testing.assert_allclose(sft_loss(logits2, targets2, mask)[0], base[0], rtol=1e-6)


def test_all_zero_mask_gives_zero_not_nan():
    logits, targets, _ = _inputs(6)
    loss, metrics = sft_loss(logits, targets, np.zeros((B, T), np.float32))
    assert loss == 0.0 and all(np.isfinite(v) for v in metrics.values())
    grads = jax.grad(lambda l: sft_loss(l, targets, np.zeros((B, T)))[0])(logits)
    assert np.all(grads == 0.0)


def test_gradient_matches_softmax_formula():
    """d nll / d logits = (softmax - onehot) * m / sum(m), and the z-loss adds 2 z lse softmax m / sum(m)."""
    logits, targets, mask = _inputs(7)
    z = 1e-2
    g = jax.grad(lambda l: clm_loss(l, targets, mask, z_loss=z)[0])(logits)
    x = logits.astype(np.float64)
    p = np.exp(x - ref_lse(x)[..., None])
    onehot = np.eye(V)[targets]
    want = ((p - onehot) + 2 * z * ref_lse(x)[..., None] * p) * mask[..., None] / mask.sum()
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


def test_bf16_logits_computed_in_float32():
    logits, targets, mask = _inputs(8)
    bf = jnp.asarray(logits, jnp.bfloat16)
    got = sequence_logprobs(bf, targets, mask)
    assert got.dtype == jnp.float32
    # Exactly the float32 computation on the bf16-rounded logits ...
    np.testing.assert_allclose(got, sequence_logprobs(bf.astype(jnp.float32), targets, mask), rtol=1e-6)
    # ... and close to the float32 logits.
    np.testing.assert_allclose(got, sequence_logprobs(logits, targets, mask), rtol=2e-2, atol=5e-2)
    g = jax.grad(lambda l: clm_loss(l, targets, mask)[0])(bf)
    assert g.dtype == jnp.bfloat16


def test_no_float32_copy_of_bf16_logits():
    """Forward and backward never materialise a float32 [B, T, V] array (nor a log_softmax output)."""
    b, t, v = 4, 64, 2048
    logits = jax.ShapeDtypeStruct((b, t, v), jnp.bfloat16)
    targets = jax.ShapeDtypeStruct((b, t), jnp.int32)
    mask = jax.ShapeDtypeStruct((b, t), jnp.float32)
    f32_bytes = b * t * v * 4
    fwd = jax.jit(token_logprobs).lower(logits, targets).compile().memory_analysis()
    grad = (
        jax.jit(jax.grad(lambda l, y, m: clm_loss(l, y, m, z_loss=1e-4)[0]))
        .lower(logits, targets, mask)
        .compile()
        .memory_analysis()
    )
    if fwd is None or grad is None:
        pytest.skip("no memory analysis on this backend")
    assert fwd.temp_size_in_bytes < f32_bytes // 8
    assert grad.temp_size_in_bytes < f32_bytes // 8


@pytest.mark.parametrize("chunk", [4, 5, 32])
def test_chunked_token_stats_equal_whole_logits_with_gradients(chunk):
    """The chunked LM head (never the whole [B, T, V] logits) gives the same log-probs, logsumexps,
    argmax hits and gradients (w.r.t. hidden states and head) as the whole logits; T=13 is not a
    multiple of the chunk, so the padding path is covered."""
    from jaxalign.losses import chunked_token_stats, nll_loss, token_stats

    kh, kw, ky, km = jax.random.split(jax.random.key(3), 4)
    hidden = jax.random.normal(kh, (3, 13, 16))
    head = jax.random.normal(kw, (16, 50)) * 0.5
    targets = jax.random.randint(ky, (3, 13), 0, 50)
    mask = (jax.random.uniform(km, (3, 13)) > 0.3).astype(jnp.float32)

    def whole(h, w):
        return token_stats(jnp.einsum("btd,dv->btv", h, w), targets)

    def chunked(h, w):
        return chunked_token_stats(h, w, targets, chunk)

    a, b = whole(hidden, head), chunked(hidden, head)
    np.testing.assert_allclose(b.logprobs, a.logprobs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.lse, a.lse, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b.is_argmax, a.is_argmax)
    loss = lambda f: lambda h, w: nll_loss(f(h, w), mask, z_loss=1e-2)[0]
    ga = jax.grad(loss(whole), argnums=(0, 1))(hidden, head)
    gb = jax.jit(jax.grad(loss(chunked), argnums=(0, 1)))(hidden, head)
    for x, y in zip(ga, gb):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)


def test_chunked_token_stats_never_hold_the_whole_logits():
    """Compiled forward + backward of the chunked head: no buffer of the whole [B, T, V] float32 size,
    while the whole-logits version has one."""
    from jaxalign.losses import chunked_token_stats, nll_loss, token_stats

    B, T, D, V = 2, 256, 8, 4096
    hidden, head = jnp.ones((B, T, D)), jnp.ones((D, V)) * 0.01
    targets, mask = jnp.zeros((B, T), jnp.int32), jnp.ones((B, T))

    def temp_bytes(stats_fn):
        f = jax.jit(jax.grad(lambda h, w: nll_loss(stats_fn(h, w), mask)[0], argnums=(0, 1)))
        return f.lower(hidden, head).compile().memory_analysis().temp_size_in_bytes

    whole = temp_bytes(lambda h, w: token_stats(jnp.einsum("btd,dv->btv", h, w), targets))
    chunked = temp_bytes(lambda h, w: chunked_token_stats(h, w, targets, 16))
    logits_bytes = B * T * V * 4
    assert whole >= logits_bytes
    assert chunked < logits_bytes / 4, (chunked, logits_bytes)
