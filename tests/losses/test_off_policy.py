"""losses.importance_weights (truncated IS, IcePop) and the token_weights of grpo_loss / ppo_clip_loss, on
hand-checkable numbers, gradients included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses

# ρ = exp(prox - behaviour) per token: 1, e^1, e^-1 | 3, 0.25, (masked: e^5)
PROX = np.log(np.array([[1.0, np.e, 1 / np.e], [3.0, 0.25, 1.0]], np.float32))
BEHAV = np.zeros((2, 3), np.float32)
BEHAV[1, 2] = -5.0
MASK = np.array([[1, 1, 1], [1, 1, 0]], np.float32)


def test_truncated_is_caps_the_ratio_and_counts_what_it_truncates():
    w, m = losses.importance_weights(PROX, BEHAV, MASK, kind="tis", cap=2.0)
    np.testing.assert_allclose(w, [[1.0, 2.0, 1 / np.e], [2.0, 0.25, 0.0]], rtol=1e-6)
    assert float(m["off_policy/corrected_frac"]) == pytest.approx(2 / 5)  # e^1 and 3 are over C = 2
    assert float(m["off_policy/is_ratio"]) == pytest.approx((1 + np.e + 1 / np.e + 3 + 0.25) / 5, rel=1e-6)
    assert float(m["off_policy/is_ratio_max"]) == pytest.approx(3.0, rel=1e-6)  # the masked e^5 is left out


def test_icepop_masks_tokens_outside_the_band():
    w, m = losses.importance_weights(PROX, BEHAV, MASK, kind="icepop", band=(0.5, 2.9))
    np.testing.assert_array_equal(w, [[1, 1, 0], [0, 0, 0]])  # 1/e < 0.5, 3 > 2.9, 0.25 < 0.5
    assert float(m["off_policy/corrected_frac"]) == pytest.approx(3 / 5)


def test_none_weighs_every_token_one_and_a_bad_kind_is_named():
    w, m = losses.importance_weights(PROX, BEHAV, MASK, kind="none")
    np.testing.assert_array_equal(w, MASK)
    assert float(m["off_policy/corrected_frac"]) == 0.0
    with pytest.raises(ValueError, match="kind='is'"):
        losses.importance_weights(PROX, BEHAV, MASK, kind="is")


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_grpo_token_weights_scale_each_token_term_and_its_gradient(reduction):
    rng = np.random.default_rng(0)
    lp = jnp.asarray(rng.normal(size=(2, 3)) * 0.1 - 1.0, jnp.float32)
    old = lp + 0.3 * jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    adv = jnp.asarray([1.0, -0.5])
    c = jnp.asarray([[1.0, 2.0, 0.0], [0.5, 1.0, 1.0]])

    def by_hand(x):  # -c_t min(ρ A, clip(ρ) A), reduced
        ratio = jnp.exp(x - old)
        a = adv[:, None]
        t = -c * jnp.minimum(ratio * a, jnp.clip(ratio, 0.8, 1.2) * a)
        if reduction == "token":
            return jnp.sum(t * MASK) / MASK.sum()
        return jnp.mean(jnp.sum(t * MASK, -1) / MASK.sum(-1))

    def ours(x):
        return losses.grpo_loss(x, old, None, adv, MASK, beta=0.0, reduction=reduction, token_weights=c)[0]

    assert float(ours(lp)) == pytest.approx(float(by_hand(lp)), rel=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(lp), jax.grad(by_hand)(lp), rtol=1e-6, atol=1e-8)
    # The weights carry no gradient: the same loss with them as a traced input has zero gradient there.
    g_c = jax.grad(lambda cc: losses.grpo_loss(lp, old, None, adv, MASK, beta=0.0, token_weights=cc)[0])(c)
    np.testing.assert_array_equal(g_c, 0.0)


def test_ppo_token_weights_scale_each_token_term():
    rng = np.random.default_rng(1)
    lp = jnp.asarray(rng.normal(size=(2, 3)) * 0.1 - 1.0, jnp.float32)
    old = lp - 0.25
    adv = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    c = jnp.asarray([[0.0, 1.0, 2.0], [1.0, 1.0, 0.5]])

    def by_hand(x):
        ratio = jnp.exp(x - old)
        t = c * jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 0.8, 1.2))
        return jnp.sum(t * MASK) / MASK.sum()

    ours = lambda x: losses.ppo_clip_loss(x, old, adv, MASK, token_weights=c)[0]  # noqa: E731
    assert float(ours(lp)) == pytest.approx(float(by_hand(lp)), rel=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(lp), jax.grad(by_hand)(lp), rtol=1e-6, atol=1e-8)
