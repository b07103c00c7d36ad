"""The GRPO family (issue 15): GSPO's sequence-level ratio, DAPO's overlong penalty, dynamic-sampling filter
and row weights, Dr. GRPO's constant reduction — each against numbers written out by hand or computed in
plain (float64) NumPy here, never against the function under test. Everything runs under jit (one
compilation per case; eager op-by-op dispatch compiles every primitive and is far slower)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.losses import group_advantages, nonconstant_groups, overlong_penalty
from jaxalign.losses import grpo_loss as _grpo_loss
from jaxalign.losses._utils import reduce_tokens as _reduce_tokens

_STATIC = ("reduction", "importance_level", "beta")
grpo_loss = jax.jit(_grpo_loss, static_argnames=_STATIC)
reduce_tokens = jax.jit(_reduce_tokens, static_argnames=("reduction",))
REDUCTIONS, LEVELS = ("token", "sequence", "constant"), ("token", "sequence")


def _close(got, want, tol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=tol, atol=tol)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _loss_grad(lp, old, ref, adv, m, **kw):
    """(loss, metrics, d loss / d logprobs) in one compilation."""
    f = lambda x: _grpo_loss(x, old, ref, adv, m, **kw)
    (loss, metrics), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp, jnp.float32))
    return loss, metrics, g


# --------------------------------------------------------------------------------------------------- GSPO


def _gspo_inputs(log_ratios, mask, old_value=-1.0):
    """logprobs = old + log-ratio; the padding positions hold garbage that must not matter."""
    lr = np.asarray(log_ratios, np.float32)
    m = np.asarray(mask, np.float32)
    old = np.full(lr.shape, old_value, np.float32)
    lp = np.where(m > 0, old + lr, 7.0).astype(np.float32)  # 7.0 at padding: a log-prob nobody can have
    return lp, old, m


def test_gspo_ratio_loss_and_gradient_inside_the_clip():
    # Row 0: mean log-ratio (0.1 + 0.3 - 0.1)/3 = 0.1; row 1: (0.2 - 0.6)/2 = -0.2 (third token padding).
    lp, old, m = _gspo_inputs([[0.1, 0.3, -0.1], [0.2, -0.6, 0.0]], [[1, 1, 1], [1, 1, 0]])
    adv = np.array([1.0, -1.0], np.float32)
    s0, s1 = np.exp(0.1), np.exp(-0.2)  # 1.10517, 0.81873: both inside [1 - 0.2, 1 + 0.28]
    kw = dict(
        beta=0.0,
        clip_eps=0.2,
        clip_eps_high=0.28,
        importance_level="sequence",
        reduction="sequence",
    )
    loss, metrics, grad = _loss_grad(lp, old, None, adv, m, **kw)
    # l_0 = -s_0 A_0 = -s_0, l_1 = -s_1 A_1 = s_1; "sequence" = their mean.
    _close(loss, (-s0 + s1) / 2)
    assert metrics["clip_ratio/region_mean"] == 0.0
    # d l_i / d lp_it = -A_i s_i m_it / |y_i|, times 1/B from the mean over rows.
    want = np.array([[-s0 / 3] * 3, [s1 / 2, s1 / 2, 0.0]]) / 2
    _close(grad, want)


def test_gspo_clip_cases_value_gradient_and_metrics():
    # ε_low = ε_high = 0.1. Mean log-ratios ±0.2 give s = e^0.2 = 1.2214 > 1.1 and e^-0.2 = 0.8187 < 0.9.
    lr = [[0.1, 0.3], [-0.4, 0.0], [0.2, 0.2], [-0.2, -0.2]]
    lp, old, m = _gspo_inputs(lr, [[1, 1], [1, 1], [1, 1], [1, 1]])
    adv = np.array([2.0, -1.0, -1.0, 1.0], np.float32)
    hi, lo = np.exp(0.2), np.exp(-0.2)
    kw = dict(beta=0.0, clip_eps=0.1, importance_level="sequence", reduction="sequence")
    loss, metrics, grad = _loss_grad(lp, old, None, adv, m, **kw)
    # row 0: s > 1+ε, A > 0: clipped, -min(2s, 2·1.1) = -2.2, no gradient.
    # row 1: s < 1-ε, A < 0: clipped, -min(-s, -0.9) = 0.9, no gradient.
    # row 2: s > 1+ε, A < 0: not clipped, -min(-s, -1.1) = s.
    # row 3: s < 1-ε, A > 0: not clipped, -min(s, 0.9) = -s.
    rows = np.array([-2.2, 0.9, hi, -lo])
    _close(loss, rows.mean())
    want = np.array([[0.0, 0.0], [0.0, 0.0], [hi / 2, hi / 2], [-lo / 2, -lo / 2]]) / 4
    _close(grad, want)
    # TRL counts clipped rows at the sequence level: row 1 low, row 0 high.
    _close(metrics["clip_ratio/low_mean"], 0.25)
    _close(metrics["clip_ratio/high_mean"], 0.25)
    _close(metrics["clip_ratio/region_mean"], 0.5)


def test_gspo_paper_epsilons_clip_a_small_drift():
    # GSPO's ε = 3e-4 / 4e-4: a mean log-ratio of 1e-3 (s = 1.0010005) is already clipped above.
    lp, old, m = _gspo_inputs([[0.002, 0.0, 0.001]], [[1, 1, 1]])
    kw = dict(
        beta=0.0,
        clip_eps=3e-4,
        clip_eps_high=4e-4,
        importance_level="sequence",
        reduction="sequence",
    )
    loss, metrics, grad = _loss_grad(lp, old, None, np.array([1.0], np.float32), m, **kw)
    _close(loss, -(1 + 4e-4), 1e-6)
    _close(grad, np.zeros((1, 3)))
    assert metrics["clip_ratio/high_mean"] == 1.0


def _np_gspo(lp, old, ref, adv, m, eps_lo, eps_hi, beta, reduction):
    """GSPO per TRL's compute_loss (importance_sampling_level="sequence"), float64 NumPy."""
    lp, old, ref, adv, m = (np.asarray(x, np.float64) for x in (lp, old, ref, adv, m))
    log_s = (np.where(m > 0, lp - old, 0.0)).sum(-1) / np.maximum(m.sum(-1), 1.0)
    s = np.exp(log_s)[:, None]
    a = adv[:, None]
    per_tok = -np.minimum(s * a, np.clip(s, 1 - eps_lo, 1 + eps_hi) * a) + 0 * lp
    d = np.where(m > 0, ref - lp, 0.0)
    per_tok = per_tok + beta * (np.exp(d) - d - 1)
    if reduction == "token":
        return (per_tok * m).sum() / m.sum()
    if reduction == "constant":
        return (per_tok * m).sum() / m.size
    has = m.sum(-1) > 0
    return ((per_tok * m).sum(-1)[has] / m.sum(-1)[has]).mean()


@pytest.mark.parametrize("reduction", ["sequence", "token", "constant"])
def test_gspo_gradient_matches_numpy_finite_differences(reduction):
    rng = np.random.default_rng(0)
    b, t = 4, 5
    m = np.ones((b, t), np.float32)
    m[1, 3:] = 0.0
    m[2, 1:] = 0.0
    old = (-1.0 - rng.random((b, t))).astype(np.float32)
    ref = (old + 0.2 * rng.standard_normal((b, t))).astype(np.float32)
    # Row log-ratio means away from log(0.8) = -0.223 and log(1.28) = 0.247 (the kinks): two rows clipped.
    lr = np.array([0.5, -0.5, 0.05, -0.02])[:, None] + 0.01 * rng.standard_normal((b, t))
    lp = (old + lr).astype(np.float32)
    adv = np.array([1.0, -0.7, 0.4, -1.3], np.float32)
    kw = dict(clip_eps=0.2, clip_eps_high=0.28, beta=0.04, reduction=reduction, importance_level="sequence")
    loss, _, g = _loss_grad(lp, old, ref, adv, m, **kw)
    want = _np_gspo(lp, old, ref, adv, m, 0.2, 0.28, 0.04, reduction)
    _close(loss, want, 1e-5)
    g = np.asarray(g)
    h = 1e-5
    fd = np.zeros((b, t))
    for i in range(b):
        for j in range(t):
            up, dn = lp.astype(np.float64), lp.astype(np.float64)
            up[i, j] += h
            dn[i, j] -= h
            fd[i, j] = (
                _np_gspo(up, old, ref, adv, m, 0.2, 0.28, 0.04, reduction)
                - _np_gspo(dn, old, ref, adv, m, 0.2, 0.28, 0.04, reduction)
            ) / (2 * h)
    _close(g, fd, 2e-4)
    assert np.all(g[m == 0] == 0.0)


def test_gspo_on_policy_equals_grpo_and_empty_row_has_ratio_one():
    """On-policy (old = sg(lp)) every ratio is 1 in value; d s_i/d lp_it = 1/|y_i| = d(mean_t ρ_it)/d lp_it,
    so under the "sequence" reduction GSPO's gradient is GRPO's: -A_i m_it / (|y_i| · #rows)."""
    lp = np.array([[-1.0, -2.0, -0.5], [-0.3, -0.1, -9.0], [-1.0, -1.0, -1.0]], np.float32)
    m = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]], np.float32)  # the last row is empty
    adv = np.array([1.5, -0.5, 3.0], np.float32)

    want = np.array([[-1.5 / 3] * 3, [0.5 / 2, 0.5 / 2, 0.0], [0.0] * 3]) / 2
    for level in LEVELS:
        # old = the same values: grpo_loss stops the gradient through old_logprobs.
        loss, _, grad = _loss_grad(
            lp, lp, None, adv, m, beta=0.0, importance_level=level, reduction="sequence"
        )
        _close(loss, -(1.5 - 0.5) / 2)  # the empty row is left out
        _close(grad, want)


def test_importance_level_and_keyword_only_arguments_are_checked():
    lp = np.zeros((2, 2), np.float32)
    m = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="importance_level"):
        _grpo_loss(lp, lp, None, np.zeros(2), m, beta=0.0, importance_level="tokens")
    with pytest.raises(TypeError):
        _grpo_loss(lp, lp, None, np.zeros(2), m, 0.2)  # hyper-parameters are keyword-only
    with pytest.raises(ValueError, match="same"):
        _grpo_loss(lp, lp, None, np.zeros(2), m[:, :1], beta=0.0)
    with pytest.raises(ValueError, match="weights"):
        _grpo_loss(lp, lp, None, np.zeros(2), m, beta=0.0, weights=np.ones(3))


# ------------------------------------------------------------------------------------ DAPO: overlong penalty


def test_overlong_penalty_three_regimes_and_boundaries():
    # L_max = 10, L_cache = 4: 0 up to 6, then (6 - L)/4 down to -1 at 10, then -1.
    lengths = np.array([0, 5, 6, 7, 8, 9, 10, 11, 50])
    want = np.array([0, 0, 0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0])
    _close(overlong_penalty(lengths, max_length=10, cache_length=4), want)
    _close(overlong_penalty(lengths.astype(np.float32), max_length=10, cache_length=4, penalty=0.5), want / 2)
    # L_cache = 0: a hard step at L_max (0 at L_max itself, as TRL).
    _close(overlong_penalty(np.array([9, 10, 11]), max_length=10, cache_length=0), [0.0, 0.0, -1.0])
    # L_cache = L_max: the ramp starts at 0.
    _close(overlong_penalty(np.array([0, 1, 4]), max_length=4, cache_length=4), [0.0, -0.25, -1.0])
    out = overlong_penalty(np.array([7], np.int32), max_length=10, cache_length=4)
    assert out.dtype == jnp.float32 and out.shape == (1,)
    for bad in (dict(max_length=10, cache_length=11), dict(max_length=10, cache_length=-1)):
        with pytest.raises(ValueError):
            overlong_penalty(lengths, **bad)
    with pytest.raises(ValueError):
        overlong_penalty(np.ones((2, 2)), max_length=10, cache_length=4)


def test_overlong_penalty_matches_trl():
    rewards = pytest.importorskip("trl.rewards")
    lengths = list(range(0, 30))
    for max_len, cache in ((20, 5), (20, 0), (16, 16), (25, 7)):
        want = rewards.get_soft_overlong_punishment(max_completion_len=max_len, soft_punish_cache=cache)(
            [[1] * n for n in lengths]
        )
        _close(overlong_penalty(np.array(lengths), max_length=max_len, cache_length=cache), want, 1e-6)


# ----------------------------------------------------------------------------- DAPO: dynamic sampling filter


def test_nonconstant_groups():
    r = np.array([1, 1, 1, 0, 1, 0, 2, 2, 2, 0.5, 0.5, 0.25], np.float32)
    want = [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    out = nonconstant_groups(r, 3)
    _close(out, want)
    assert out.dtype == jnp.float32 and out.shape == (12,)
    _close(nonconstant_groups(np.array([0.0, 0.0, 1.0, 0.0]), 2), [0, 0, 1, 1])
    _close(nonconstant_groups(np.array([3.0, 3.0]), 1), [0, 0])  # one completion per group: nothing varies
    with pytest.raises(ValueError):
        nonconstant_groups(np.zeros(5), 2)


# ------------------------------------------------------------------------------------------- row weights


def test_weighted_reductions_by_hand():
    l = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]], np.float32)
    m = np.array([[1, 1], [1, 0], [1, 0]], np.float32)
    w = np.array([1.0, 0.0, 1.0], np.float32)
    _close(reduce_tokens(l, m, "token", weights=w), (1 + 2 + 5) / 3)
    _close(reduce_tokens(l, m, "sequence", weights=w), (1.5 + 5) / 2)
    _close(reduce_tokens(l, m, "constant", weights=w), (1 + 2 + 5) / (2 * 2))  # 2 kept rows × T = 2
    w = np.array([0.5, 0.0, 1.0], np.float32)
    _close(reduce_tokens(l, m, "token", weights=w), (0.5 * 3 + 5) / (0.5 * 2 + 1))
    _close(reduce_tokens(l, m, "sequence", weights=w), (0.5 * 1.5 + 5) / 1.5)
    _close(reduce_tokens(l, m, "constant", weights=w), (0.5 * 3 + 5) / (1.5 * 2))
    for red in ("token", "sequence", "constant"):
        # all-ones weights = no weights; all-zero weights = 0, not NaN.
        _close(reduce_tokens(l, m, red, weights=np.ones(3)), reduce_tokens(l, m, red), 1e-6)
        assert reduce_tokens(l, m, red, weights=np.zeros(3)) == 0.0
    with pytest.raises(ValueError):
        reduce_tokens(l, m, "token", weights=np.ones(2))


def _weight_inputs():
    rng = np.random.default_rng(3)
    b, t = 4, 5
    m = np.ones((b, t), np.float32)
    m[0, 3:] = 0.0
    m[2, 1:] = 0.0
    old = (-1.0 - rng.random((b, t))).astype(np.float32)
    lp = (old + 0.3 * rng.standard_normal((b, t))).astype(np.float32)
    ref = (old + 0.3 * rng.standard_normal((b, t))).astype(np.float32)
    adv = rng.standard_normal(b).astype(np.float32)
    return lp, old, ref, adv, m


@functools.partial(jax.jit, static_argnames=("weighted",))
def _all_variants(lp, old, ref, adv, m, w, weighted):
    """Loss, metrics and gradient for every reduction × importance level, in one compilation."""
    out = {}
    for red in REDUCTIONS:
        for level in LEVELS:
            kw = dict(clip_eps=0.2, clip_eps_high=0.28, beta=0.04, reduction=red, importance_level=level)
            f = lambda x: _grpo_loss(x, old, ref, adv, m, weights=w if weighted else None, **kw)
            (loss, metrics), g = jax.value_and_grad(f, has_aux=True)(lp)
            out[red, level] = (loss, metrics, g)
    return out


def test_zero_weight_row_is_the_same_as_removing_it():
    lp, old, ref, adv, m = _weight_inputs()
    # Row 1 dropped; its values are wild, and must not leak into the loss, the metrics or the gradient.
    lp[1], adv[1] = 0.0, 1e4
    keep = np.array([0, 2, 3])
    w = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
    full = _all_variants(lp, old, ref, adv, m, w, weighted=True)
    cut = _all_variants(lp[keep], old[keep], ref[keep], adv[keep], m[keep], w[keep], weighted=False)
    for case in cut:
        (loss_f, met_f, g_f), (loss_c, met_c, g_c) = full[case], cut[case]
        _close(loss_f, loss_c, 1e-6)
        assert set(met_f) == set(met_c)
        for k in met_c:
            _close(met_f[k], met_c[k], 1e-6)
        _close(np.asarray(g_f)[keep], g_c, 1e-6)
        assert np.all(np.asarray(g_f)[1] == 0.0), case


def test_dynamic_sampling_pipeline_on_a_tiny_batch():
    """rewards -> (overlong penalty) -> advantages -> weights: the all-equal group is dropped and the
    token mean counts only the other group's tokens."""
    rewards = np.array([1.0, 1.0, 0.0, 1.0], np.float32)  # group 0 constant, group 1 not
    m = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], np.float32)
    adv = group_advantages(rewards, 2, normalize_std=False)  # [0, 0, -0.5, 0.5]
    w = nonconstant_groups(rewards, 2)  # [0, 0, 1, 1]
    lp = np.full((4, 4), -1.0, np.float32)
    loss, _ = grpo_loss(lp, lp, None, adv, m, beta=0.0, reduction="token", weights=w)
    _close(loss, -(-0.5 * 1 + 0.5 * 3) / 4)  # 4 kept tokens, not 10


# ---------------------------------------------------------------------------------------------- Dr. GRPO


def test_dr_grpo_constant_reduction():
    """TRL's loss_type="dr_grpo": (l · m).sum() / (B · max_completion_length), here T = 4."""
    rewards = np.array([1.0, 0.0, 3.0, 1.0], np.float32)
    adv = np.asarray(group_advantages(rewards, 2, normalize_std=False))
    _close(adv, [0.5, -0.5, 1.0, -1.0])  # no division by the std
    lengths = [2, 4, 1, 3]
    m = np.array([[1.0 if t < n else 0.0 for t in range(4)] for n in lengths], np.float32)
    lp = np.full((4, 4), -0.7, np.float32)

    # On-policy: old = the same log-probs (no gradient flows through old_logprobs).
    loss, _, grad = _loss_grad(lp, lp, None, adv, m, beta=0.0, reduction="constant")
    _close(loss, -(0.5 * 2 - 0.5 * 4 + 1.0 * 1 - 1.0 * 3) / (4 * 4))  # = 3/16
    _close(loss, 0.1875)
    # On-policy gradient: -A_b m_bt / (B T), the same weight for every token whatever its row's length.
    _close(grad, -adv[:, None] * m / 16)
    # A zero-weight row leaves B·T -> (B - 1)·T.
    w = np.array([1.0, 1.0, 1.0, 0.0], np.float32)
    loss_w, _ = grpo_loss(lp, lp, None, adv, m, beta=0.0, reduction="constant", weights=w)
    _close(loss_w, -(0.5 * 2 - 0.5 * 4 + 1.0 * 1) / (3 * 4))


# ------------------------------------------------------------------------------------------------------
# loss_type: CISPO, SAPO, GMPO, BNPO (issue 25), value and gradient written out by hand.
# ------------------------------------------------------------------------------------------------------
_LT = jax.jit(_grpo_loss, static_argnames=_STATIC + ("loss_type", "sapo_temperatures"))


def _value_and_grad(lp, old, adv, m, **kw):
    f = lambda x: _LT(x, old, None, adv, m, beta=0.0, **kw)[0]  # noqa: E731
    return float(f(lp)), np.asarray(jax.grad(f)(lp), np.float64)


# Two rows, three tokens, the last of row 1 masked; log-ratios chosen to land on each side of the bands.
LOG_RATIO = np.array([[0.0, np.log(6.0), np.log(0.5)], [np.log(1.5), np.log(0.5), 2.0]], np.float32)
LP = np.array([[-1.0, -0.5, -2.0], [-0.7, -1.2, -0.3]], np.float32)
OLD = LP - LOG_RATIO
MASK = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
ADV = np.array([1.0, -2.0], np.float32)


def test_cispo_detached_capped_weight_times_the_log_prob():
    # w = (1, 6, 0.5 | 1.5, 0.5); cap 1 + ε_high = 5 -> (1, 5, 0.5 | 1.5, 0.5); token mean over 5 tokens.
    w = np.array([[1.0, 5.0, 0.5], [1.5, 0.5, 0.0]])
    a = ADV[:, None].astype(np.float64)
    want = np.sum(-w * a * LP * MASK) / 5
    got, g = _value_and_grad(LP, OLD, ADV, MASK, loss_type="cispo", reduction="token", clip_eps_high=4.0)
    assert got == pytest.approx(want, rel=1e-5)
    _close(g, -w * a * MASK / 5)  # the weight is detached: d/d log π = -w A / N, even where w is capped


def test_sapo_sigmoid_gate_value_and_gradient():
    tp, tn = 1.0, 1.05
    r = np.exp(LOG_RATIO.astype(np.float64))
    tau = np.where(ADV[:, None] > 0, tp, tn) * np.ones_like(r)
    sig = 1 / (1 + np.exp(-tau * (r - 1)))
    a = ADV[:, None].astype(np.float64)
    per = -(4 / tau) * sig * a
    want = np.mean([np.sum(per[0] * MASK[0]) / 3, np.sum(per[1] * MASK[1]) / 2])  # sequence mean
    got, g = _value_and_grad(
        LP, OLD, ADV, MASK, loss_type="sapo", reduction="sequence", sapo_temperatures=(tp, tn)
    )
    assert got == pytest.approx(want, rel=1e-5)
    # d/d log π_t of -(4/τ) σ(τ(r - 1)) A = -4 σ (1 - σ) r A, over the row's token count, halved (2 rows)
    _close(g, -4 * sig * (1 - sig) * r * a * MASK / np.array([[3.0], [2.0]]) / 2)
    # On-policy (r = 1) the gate's gradient is the plain policy gradient -A.
    _, g1 = _value_and_grad(LP, LP, ADV, MASK, loss_type="sapo", reduction="token")
    _close(g1, -ADV[:, None] * MASK / 5)


def test_gmpo_geometric_mean_of_log_clipped_ratios():
    eps = 0.4
    # Row 0 (A > 0): x = log w = (0, log 6, log 0.5) -> min(x, clip(x, -0.4, 0.4)) = (0, 0.4, log 0.5): the
    # high one clipped (no gradient), the low one kept (pessimistic). Row 1 (A < 0): x = -log w =
    # (-log 1.5, log 2) -> (-log 1.5, 0.4): the raised ratio kept (pessimistic), the lowered one clipped;
    # back (× sgn A): (log 1.5, -0.4).
    l0 = np.array([0.0, 0.4, np.log(0.5)])
    l1 = np.array([np.log(1.5), -0.4])
    s0, s1 = np.exp(l0.mean()), np.exp(l1.mean())
    want = np.mean([-1.0 * s0, 2.0 * s1])
    got, g = _value_and_grad(
        LP, OLD, ADV, MASK, loss_type="gmpo", reduction="sequence", clip_eps=eps, clip_eps_high=eps
    )
    assert got == pytest.approx(want, rel=1e-5)
    # d/d log π_t = -A s / |o| on the unclipped tokens, 0 on the clipped ones; ÷ 2 rows.
    want_g = np.array([[-s0 / 3, 0.0, -s0 / 3], [2.0 * s1 / 2, 0.0, 0.0]]) / 2
    _close(g, want_g)


def test_bnpo_is_the_clipped_ratio_with_the_token_mean_and_other_reductions_are_refused():
    a = _value_and_grad(LP, OLD, ADV, MASK, loss_type="bnpo", reduction="token")
    b = _value_and_grad(LP, OLD, ADV, MASK, loss_type="grpo", reduction="token")
    assert a[0] == b[0]
    _close(a[1], b[1], tol=0)
    with pytest.raises(ValueError, match="reduction must be 'token'"):
        _grpo_loss(LP, OLD, None, ADV, MASK, beta=0.0, loss_type="bnpo", reduction="sequence")
    with pytest.raises(ValueError, match="loss_type='gmpo'"):
        _grpo_loss(LP, OLD, None, ADV, MASK, beta=0.0, loss_type="gmpo", importance_level="sequence")
    with pytest.raises(ValueError, match="loss_type='ppo'"):
        _grpo_loss(LP, OLD, None, ADV, MASK, beta=0.0, loss_type="ppo")
