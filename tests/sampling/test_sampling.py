"""sample_token / process_logits: greedy, temperature frequencies, top-k / top-p support, log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.sampling import process_logits, sample_token, sample_token_with_logprobs

LOGITS = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], np.float32)  # V = 8
N = 40_000  # samples of one step: TV noise ~ sqrt(V / N) / 2 ≈ 0.007


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _frequencies(temperature, top_k=0, top_p=1.0, seed=0):
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (N, LOGITS.size))
    fn = jax.jit(lambda l, k: sample_token(l, k, temperature, top_k, top_p))
    tokens = np.asarray(fn(logits, jax.random.key(seed)))
    return np.bincount(tokens, minlength=LOGITS.size) / N


def _top_p_support(probs, top_p):
    order = np.argsort(-probs)
    before = np.cumsum(probs[order]) - probs[order]
    return set(order[before < top_p].tolist())


def test_greedy_is_argmax():
    logits = jax.random.normal(jax.random.key(0), (5, 11))
    np.testing.assert_array_equal(sample_token(logits, None, 0.0), np.argmax(logits, -1))
    tok, lp, mlp = sample_token_with_logprobs(logits, None, 0.0, top_k=3)
    np.testing.assert_array_equal(tok, np.argmax(logits, -1))
    np.testing.assert_array_equal(lp, 0.0)  # a point mass
    np.testing.assert_allclose(mlp, np.max(jax.nn.log_softmax(logits), -1), rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_frequencies_match_tempered_softmax(temperature):
    freq = _frequencies(temperature)
    tv = 0.5 * np.abs(freq - _softmax(LOGITS / temperature)).sum()
    assert tv < 0.02, (freq, tv)


def test_top_k_support_and_renormalised_frequencies():
    freq = _frequencies(1.0, top_k=3)
    assert set(np.nonzero(freq)[0]) <= {0, 1, 2}
    expected = np.zeros_like(LOGITS)
    expected[:3] = _softmax(LOGITS[:3])
    assert 0.5 * np.abs(freq - expected).sum() < 0.02


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.9])
def test_top_p_support_and_renormalised_frequencies(top_p):
    probs = _softmax(LOGITS / 0.8)
    support = _top_p_support(probs, top_p)
    freq = _frequencies(0.8, top_p=top_p)
    assert set(np.nonzero(freq)[0]) <= support
    expected = np.where(np.isin(np.arange(LOGITS.size), list(support)), probs, 0.0)
    assert 0.5 * np.abs(freq - expected / expected.sum()).sum() < 0.02


def test_top_k_then_top_p_on_random_rows():
    """Each row's kept set = top-p within the top-k, compared with a NumPy reference."""
    logits = np.asarray(jax.random.normal(jax.random.key(1), (16, 50)) * 2)
    out = np.asarray(jax.jit(lambda l: process_logits(l, 0.7, 10, 0.8))(logits))
    for row, got in zip(logits, out):
        top = np.argsort(-row)[:10]
        probs = _softmax(row[top] / 0.7)
        keep = {int(top[i]) for i in _top_p_support(probs, 0.8)}
        assert set(np.nonzero(got > -1e30)[0].tolist()) == keep
        np.testing.assert_allclose(got[list(keep)], row[list(keep)] / 0.7, rtol=1e-6)


def test_sampled_tokens_stay_in_support_over_many_rows():
    logits = jax.random.normal(jax.random.key(2), (256, 100)) * 3
    tok = np.asarray(sample_token(logits, jax.random.key(3), 1.3, top_k=5))
    top5 = np.argsort(-np.asarray(logits), -1)[:, :5]
    assert all(t in row for t, row in zip(tok, top5))


def test_logprobs_under_sampling_and_model_distributions():
    logits = jax.random.normal(jax.random.key(4), (32, 20)) * 2
    tok, lp, mlp = sample_token_with_logprobs(logits, jax.random.key(5), 0.7, 6, 0.9)
    rows = np.arange(32)
    sampling_lp = jax.nn.log_softmax(process_logits(logits, 0.7, 6, 0.9))
    np.testing.assert_allclose(lp, sampling_lp[rows, tok], rtol=1e-5)
    np.testing.assert_allclose(mlp, jax.nn.log_softmax(logits)[rows, tok], rtol=1e-5)
    assert np.all(np.isfinite(lp))


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="top_p"):
        process_logits(jnp.zeros((1, 4)), 1.0, 0, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        sample_token(jnp.zeros((1, 4)), None, -1.0)


def test_inverse_cdf_draws_follow_the_sampling_distribution():
    """Inverse-CDF draws (the sampler's): frequencies match softmax(process_logits), truncated tokens are
    never drawn, and the log-probs are those of `sample_token_with_logprobs`."""
    from jaxalign.sampling.sampling import sample_token_by_inverse_cdf

    logits = jnp.asarray([[2.0, 0.5, -1.0, 1.0, 0.0, -3.0]] * 40000)
    u = jax.random.uniform(jax.random.key(0), (40000,))
    for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.7, 4, 1.0), (1.3, 0, 0.8)):
        tok, lp, mlp = sample_token_by_inverse_cdf(logits, u, temperature, top_k, top_p)
        p = np.asarray(jax.nn.softmax(process_logits(logits[0], temperature, top_k, top_p)))
        freq = np.bincount(np.asarray(tok), minlength=6) / len(tok)
        np.testing.assert_allclose(freq, p, atol=0.01)
        assert np.all(freq[p == 0] == 0)
        np.testing.assert_allclose(np.exp(lp), p[np.asarray(tok)], rtol=1e-5)
        np.testing.assert_allclose(mlp, jax.nn.log_softmax(logits[0])[np.asarray(tok)], rtol=1e-5)
    # u at the ends of [0, 1) still lands on a token with probability > 0.
    edge = jnp.asarray([0.0, np.nextafter(np.float32(1), np.float32(0))], jnp.float32)
    tok, _, _ = sample_token_by_inverse_cdf(logits[:2], edge, 1.0, 2, 1.0)
    assert set(np.asarray(tok).tolist()) <= {0, 3}
