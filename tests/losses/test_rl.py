"""ppo_clip_loss, value_loss, gae, whiten, kl_penalty, the adaptive KL controller, grpo_loss and the
group advantages against float64 NumPy loops, and hand cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.losses import (
    AdaptiveKLState,
    adaptive_kl_update,
    gae,
    group_advantages,
    grpo_loss,
    init_adaptive_kl,
    kl_penalty,
    ppo_clip_loss,
    rloo_advantages,
    value_loss,
    whiten,
)

B, T = 4, 6


def _mask(seed):
    """Right padding of varying lengths, one row with a hole in the middle."""
    lengths = [6, 4, 5, 2]
    m = np.array([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths], np.float32)
    m[2, 1] = 0.0
    return m


def _rl_inputs(seed=0):
    rng = np.random.default_rng(seed)
    old = (-2 * rng.random((B, T))).astype(np.float32)
    new = (old + 0.4 * rng.standard_normal((B, T))).astype(np.float32)  # ratios both in and out of the clip
    ref = (old + 0.3 * rng.standard_normal((B, T))).astype(np.float32)
    adv = rng.standard_normal((B, T)).astype(np.float32)
    return new, old, ref, adv, _mask(seed)


def _reduce(per_token, mask, reduction):
    """The three reductions, written out with loops."""
    b, t = mask.shape
    if reduction == "token":
        num = sum(per_token[i][j] for i in range(b) for j in range(t) if mask[i, j])
        return num / max(mask.sum(), 1)
    if reduction == "constant":
        return sum(per_token[i][j] for i in range(b) for j in range(t) if mask[i, j]) / (b * t)
    means = []
    for i in range(b):
        toks = [per_token[i][j] for j in range(t) if mask[i, j]]
        if toks:
            means.append(sum(toks) / len(toks))
    return sum(means) / max(len(means), 1)


def _mmean(x, mask):
    return sum(x[i][j] for i in range(mask.shape[0]) for j in range(mask.shape[1]) if mask[i, j]) / max(
        mask.sum(), 1
    )


def _close(got, want, tol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------- PPO


def ref_ppo(new, old, adv, mask, eps, reduction):
    per_token, clipped, kl, ratio = [], [], [], []
    for i in range(B):
        row, crow, krow, rrow = [], [], [], []
        for j in range(T):
            a = float(adv[i, j]) if adv.ndim == 2 else float(adv[i])
            r = math.exp(float(new[i, j]) - float(old[i, j]))
            l1, l2 = -a * r, -a * min(max(r, 1 - eps), 1 + eps)
            row.append(max(l1, l2))
            crow.append(float((r > 1 + eps and a > 0) or (r < 1 - eps and a < 0)))
            krow.append(0.5 * (float(new[i, j]) - float(old[i, j])) ** 2)
            rrow.append(r)
        per_token.append(row), clipped.append(crow), kl.append(krow), ratio.append(rrow)
    loss = _reduce(per_token, mask, reduction)
    return loss, {
        "loss/policy": loss,
        "policy/clipfrac": _mmean(clipped, mask),
        "policy/approxkl": _mmean(kl, mask),
        "policy/ratio": _mmean(ratio, mask),
    }


@pytest.mark.parametrize("reduction", ["token", "sequence", "constant"])
@pytest.mark.parametrize("per_sequence_adv", [False, True])
def test_ppo_clip_matches_reference(reduction, per_sequence_adv):
    new, old, _, adv, mask = _rl_inputs(1)
    if per_sequence_adv:
        adv = adv[:, 0]
    loss, metrics = jax.jit(ppo_clip_loss, static_argnames="reduction")(
        new, old, adv, mask, clip_eps=0.2, reduction=reduction
    )
    want_loss, want = ref_ppo(new, old, adv, mask, 0.2, reduction)
    _close(loss, want_loss)
    for k in want:
        _close(metrics[k], want[k])
    assert 0 < metrics["policy/clipfrac"] < 1


def test_ppo_on_policy_hand_case():
    _, old, _, adv, mask = _rl_inputs(2)
    loss, m = ppo_clip_loss(old, old, adv, mask)
    _close(loss, -_mmean(adv, mask))
    assert m["policy/clipfrac"] == 0.0 and m["policy/approxkl"] == 0.0
    _close(m["policy/ratio"], 1.0)
    # The on-policy gradient is the policy gradient: -A m / sum(m).
    g = jax.grad(lambda lp: ppo_clip_loss(lp, old, adv, mask)[0])(old)
    _close(g, -adv * mask / mask.sum())


def ref_value(v, old, ret, mask, eps):
    loss, frac = [], []
    for i in range(B):
        lrow, frow = [], []
        for j in range(T):
            vc = float(old[i, j]) + min(max(float(v[i, j]) - float(old[i, j]), -eps), eps)
            e1, e2 = (float(v[i, j]) - float(ret[i, j])) ** 2, (vc - float(ret[i, j])) ** 2
            lrow.append(max(e1, e2))
            frow.append(float(abs(float(v[i, j]) - float(old[i, j])) > eps and e2 > e1))
        loss.append(lrow), frac.append(frow)
    return 0.5 * _mmean(loss, mask), _mmean(frac, mask)


def test_value_loss_matches_reference():
    rng = np.random.default_rng(3)
    old, ret = rng.standard_normal((2, B, T)).astype(np.float32)
    v = (old + 0.4 * rng.standard_normal((B, T))).astype(np.float32)
    mask = _mask(3)
    loss, m = jax.jit(value_loss)(v, old, ret, mask, clip_eps=0.2)
    want_loss, want_frac = ref_value(v, old, ret, mask, 0.2)
    _close(loss, want_loss)
    _close(m["val/clipfrac"], want_frac)
    _close(m["loss/value"], want_loss)
    # Unmoved values: plain half squared error.
    _close(value_loss(old, old, ret, mask)[0], 0.5 * _mmean((old - ret).astype(np.float64) ** 2, mask))


def test_clip_fractions_are_not_decided_by_rounding():
    # Where nothing is clipped in exact arithmetic nothing may be counted, whatever rounding does.
    # Values moved less than ε, near zero and of either sign, so `old + clip(v - old)` is v only up to an ulp,
    # and targets next to v: the two errors are equal in exact arithmetic and differ by rounding.
    rng = np.random.default_rng(4)
    shape = (8, 16)  # (TRL's `err_clipped > err` counts 6 of these 128)
    old_v = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    v = (old_v + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    ret = (v + 1e-6 * rng.standard_normal(shape)).astype(np.float32)
    _, m = value_loss(v, old_v, ret, np.ones(shape, np.float32), clip_eps=0.2)
    assert float(m["val/clipfrac"]) == 0.0
    # Log-probs one ulp from the old ones (ratio 1 ± 1e-7).
    noise = rng.choice([-1.0, 0.0, 1.0], (B, T)).astype(np.float32)
    _, old, _, adv, mask = _rl_inputs(5)
    new = np.nextafter(old, old + noise).astype(np.float32)
    _, m = ppo_clip_loss(new, old, adv, mask, clip_eps=0.2)
    assert float(m["policy/clipfrac"]) == 0.0
    # Past the clip, a token counts where the clipped error is the larger: a value moved 0.25 towards its
    # target (|R - old| = d) has error (d - 0.25)², clipped (d - 0.2)², larger iff d > 0.225; moved away,
    # the unclipped error is always the larger.
    ones = np.ones((B, T), np.float32)
    old_v, ret = (3.0 * rng.standard_normal((2, B, T))).astype(np.float32)
    step = np.float32(0.25) * np.sign(ret - old_v)
    d = np.abs(ret - old_v)
    _, m = value_loss(old_v + step, old_v, ret, ones, clip_eps=0.2)
    _close(m["val/clipfrac"], np.mean(d > 0.225))
    assert 0 < float(m["val/clipfrac"]) < 1
    _, m = value_loss(old_v - step, old_v, ret, ones, clip_eps=0.2)
    assert float(m["val/clipfrac"]) == 0.0


# ------------------------------------------------------------------------------------------------- GAE


def ref_gae(rewards, values, mask, gamma, lam):
    """Drop masked positions, run the textbook recursion on what is left, put the results back."""
    adv = np.zeros(rewards.shape)
    for i in range(rewards.shape[0]):
        idx = [j for j in range(rewards.shape[1]) if mask[i, j]]
        last = 0.0
        for k in reversed(range(len(idx))):
            j = idx[k]
            next_v = float(values[i, idx[k + 1]]) if k + 1 < len(idx) else 0.0
            delta = float(rewards[i, j]) + gamma * next_v - float(values[i, j])
            last = delta + gamma * lam * last
            adv[i, j] = last
    return adv, (adv + values) * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_reference(gamma, lam):
    rng = np.random.default_rng(4)
    rewards, values = rng.standard_normal((2, B, T)).astype(np.float32)
    mask = _mask(4)
    adv, ret = jax.jit(gae)(rewards, values, mask, gamma=gamma, lam=lam)
    want_adv, want_ret = ref_gae(rewards, values, mask, gamma, lam)
    _close(adv, want_adv)
    _close(ret, want_ret)


def test_gae_lambda_one_is_reward_to_go_minus_value():
    rng = np.random.default_rng(5)
    rewards, values = rng.standard_normal((2, B, T)).astype(np.float32)
    mask = np.ones((B, T), np.float32)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = np.cumsum(rewards[:, ::-1].astype(np.float64), axis=1)[:, ::-1]
    _close(adv, to_go - values)
    _close(ret, to_go)


def test_gae_masked_positions_neither_contribute_nor_break_bootstrapping():
    rng = np.random.default_rng(6)
    rewards, values = rng.standard_normal((2, B, T)).astype(np.float32)
    mask = _mask(6)
    adv, ret = gae(rewards, values, mask, gamma=0.99, lam=0.95)
    # Garbage at masked positions changes nothing.
    noisy = lambda x: np.where(mask == 0, 1e3 * rng.standard_normal(x.shape), x).astype(np.float32)
    adv2, ret2 = gae(noisy(rewards), noisy(values), mask, gamma=0.99, lam=0.95)
    _close(adv2, adv)
    _close(ret2, ret)
    assert np.all(np.asarray(adv)[mask == 0] == 0) and np.all(np.asarray(ret)[mask == 0] == 0)
    # A hole in the middle: the same as the row with the hole squeezed out (left-aligned, right-padded).
    row = 2
    keep = mask[row] > 0
    squeezed = lambda x: np.concatenate([x[row][keep], np.zeros(T - keep.sum(), np.float32)])[None]
    m_sq = np.concatenate([np.ones(keep.sum()), np.zeros(T - keep.sum())])[None].astype(np.float32)
    adv_sq, _ = gae(squeezed(rewards), squeezed(values), m_sq, gamma=0.99, lam=0.95)
    _close(np.asarray(adv)[row][keep], np.asarray(adv_sq)[0][: keep.sum()])


def test_gae_right_padding_matches_trl_recursion():
    """TRL: zero padded rewards and values, then the plain recursion; the same for right padding."""
    rng = np.random.default_rng(7)
    rewards, values = rng.standard_normal((2, B, T)).astype(np.float32)
    mask = _mask(7)
    mask[2, 1] = 1.0  # right padding only
    r, v = rewards * mask, values * mask
    adv = np.zeros((B, T))
    last = np.zeros(B)
    for t in reversed(range(T)):
        next_v = v[:, t + 1] if t < T - 1 else 0.0
        last = r[:, t] + 0.9 * next_v - v[:, t] + 0.9 * 0.95 * last
        adv[:, t] = last
    got, _ = gae(rewards, values, mask, gamma=0.9, lam=0.95)
    _close(np.asarray(got) * mask, adv * mask)


def test_whiten_matches_trl_masked_whiten():
    rng = np.random.default_rng(8)
    x = (3 * rng.standard_normal((B, T)) + 1).astype(np.float32)
    mask = _mask(8)
    vals = x[mask > 0].astype(np.float64)
    mean, var = vals.mean(), vals.var(ddof=1)
    _close(np.asarray(whiten(x, mask))[mask > 0], (vals - mean) / np.sqrt(var + 1e-8), 1e-4)
    _close(
        np.asarray(whiten(x, mask, shift_mean=False))[mask > 0],
        (vals - mean) / np.sqrt(var + 1e-8) + mean,
        1e-4,
    )


# -------------------------------------------------------------------------------------------------- KL


def test_kl_penalty_kinds():
    new, _, ref, _, _ = _rl_inputs(9)
    d = new.astype(np.float64) - ref
    want = {"k1": d, "k2": 0.5 * d**2, "k3": np.exp(-d) - 1 + d, "abs": np.abs(d)}
    for kind, w in want.items():
        _close(jax.jit(kl_penalty, static_argnames="kind")(new, ref, kind=kind), w)
    assert np.all(np.asarray(kl_penalty(new, ref, "k3")) >= 0)
    with pytest.raises(ValueError):
        kl_penalty(new, ref, "full")


def test_k1_and_k3_are_unbiased_estimators_of_kl():
    """E_{a~π}[k1] = E_{a~π}[k3] = KL(π || π_ref), computed exactly over a small vocabulary."""
    rng = np.random.default_rng(10)
    logp = np.log(rng.dirichlet(np.ones(6))).astype(np.float32)
    logq = np.log(rng.dirichlet(np.ones(6))).astype(np.float32)
    p = np.exp(logp.astype(np.float64))
    kl = np.sum(p * (logp - logq))
    for kind in ("k1", "k3"):
        _close(np.sum(p * np.asarray(kl_penalty(logp, logq, kind), np.float64)), kl, 1e-5)


def test_adaptive_kl_controller_matches_trl():
    def trl(value, current, n_steps, target, horizon):
        err = min(max(current / target - 1, -0.2), 0.2)
        return value * (1 + err * n_steps / horizon)

    state = init_adaptive_kl(0.2)
    want = 0.2
    update = jax.jit(adaptive_kl_update, static_argnames=("target", "horizon"))
    for kl in (12.0, 5.0, 6.1, 0.0, 6.0):
        state = update(state, jnp.float32(kl), 64, target=6.0, horizon=10000.0)
        want = trl(want, kl, 64, 6.0, 10000.0)
        _close(state.value, want, 1e-6)
    assert isinstance(state, AdaptiveKLState) and state.value.dtype == jnp.float32
    # Clipped proportional error: a huge KL moves β by at most 20% of n_steps / horizon.
    big = adaptive_kl_update(AdaptiveKLState(jnp.float32(1.0)), 1e6, 100, 6.0, 100.0)
    _close(big.value, 1.2)
    # A pure state update: usable inside lax.scan.
    final, _ = jax.lax.scan(
        lambda s, k: (adaptive_kl_update(s, k, 8, 6.0, 100.0), None), init_adaptive_kl(0.1), jnp.full(5, 12.0)
    )
    _close(final.value, 0.1 * (1 + 0.2 * 8 / 100) ** 5, 1e-6)


# ------------------------------------------------------------------------------------------------ GRPO


def test_group_advantages_match_reference():
    rng = np.random.default_rng(11)
    r = rng.standard_normal(12).astype(np.float32)
    want, want_centered = np.zeros(12), np.zeros(12)
    for g in range(3):
        grp = r[4 * g : 4 * g + 4].astype(np.float64)
        mean = sum(grp) / 4
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / 3)  # unbiased, as torch.std
        for i in range(4):
            want[4 * g + i] = (grp[i] - mean) / (std + 1e-4)
            want_centered[4 * g + i] = grp[i] - mean
    _close(jax.jit(group_advantages, static_argnums=1)(r, 4), want)
    _close(group_advantages(r, 4, normalize_std=False), want_centered)
    # A group whose rewards are all equal gets zero advantages, not NaN.
    _close(group_advantages(np.ones(4, np.float32), 4), np.zeros(4))
    with pytest.raises(ValueError):
        group_advantages(r, 5)


def test_constant_groups_get_exactly_zero_advantage():
    # 0.1 three times: the float mean is not 0.1, so plain arithmetic leaves a ~1e-9 residue (÷ std + eps
    # in GRPO magnifies it); a group without a learning signal must not move the policy at all.
    r = np.array([0.1, 0.1, 0.1, 0.7, 0.1, 0.3], np.float32)
    for adv in (group_advantages(r, 3), group_advantages(r, 3, normalize_std=False), rloo_advantages(r, 3)):
        assert np.all(np.asarray(adv)[:3] == 0.0)
        assert np.all(np.asarray(adv)[3:] != 0.0)


def test_rloo_advantages_leave_one_out():
    rng = np.random.default_rng(12)
    r = rng.standard_normal(12).astype(np.float32)
    want = np.zeros(12)
    for g in range(4):
        for i in range(3):
            others = [float(r[3 * g + j]) for j in range(3) if j != i]
            want[3 * g + i] = float(r[3 * g + i]) - sum(others) / len(others)
    _close(jax.jit(rloo_advantages, static_argnums=1)(r, 3), want)
    with pytest.raises(ValueError):
        rloo_advantages(r, 1)


def ref_grpo(new, old, ref, adv, mask, eps_low, eps_high, beta, reduction):
    per_token, kls, low, high = [], [], [], []
    for i in range(B):
        row, krow, lrow, hrow = [], [], [], []
        for j in range(T):
            a = float(adv[i]) if adv.ndim == 1 else float(adv[i, j])
            r = math.exp(float(new[i, j]) - float(old[i, j]))
            d = float(ref[i, j]) - float(new[i, j])
            kl = math.exp(d) - d - 1
            row.append(-min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a) + beta * kl)
            krow.append(kl)
            lrow.append(float(r < 1 - eps_low and a < 0))
            hrow.append(float(r > 1 + eps_high and a > 0))
        per_token.append(row), kls.append(krow), low.append(lrow), high.append(hrow)
    region = [[max(a, b) for a, b in zip(x, y)] for x, y in zip(low, high)]
    return _reduce(per_token, mask, reduction), {
        "kl": _mmean(kls, mask),
        "clip_ratio/low_mean": _mmean(low, mask),
        "clip_ratio/high_mean": _mmean(high, mask),
        "clip_ratio/region_mean": _mmean(region, mask),
    }


@pytest.mark.parametrize("reduction", ["sequence", "token", "constant"])
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_grpo_matches_reference(reduction, eps_high):
    new, old, ref, _, mask = _rl_inputs(13)
    adv = group_advantages(np.random.default_rng(13).standard_normal(B).astype(np.float32), 2)
    adv = np.asarray(adv)
    f = jax.jit(grpo_loss, static_argnames=("reduction",))
    loss, m = f(
        new, old, ref, adv, mask, clip_eps=0.2, beta=0.04, reduction=reduction, clip_eps_high=eps_high
    )
    want_loss, want = ref_grpo(
        new, old, ref, adv, mask, 0.2, 0.2 if eps_high is None else eps_high, 0.04, reduction
    )
    _close(loss, want_loss)
    for k in want:
        _close(m[k], want[k])


def test_grpo_hand_cases():
    _, old, _, _, mask = _rl_inputs(14)
    adv = np.array([1.0, -1.0, 0.5, 2.0], np.float32)
    # On-policy and at the reference: ratio 1, KL 0, loss = -mean over sequences of A.
    loss, m = grpo_loss(old, old, old, adv, mask, beta=0.04, reduction="sequence")
    _close(loss, -adv.mean())
    assert m["kl"] == 0.0 and m["clip_ratio/region_mean"] == 0.0
    # Token reduction weighs sequences by length.
    loss, _ = grpo_loss(old, old, old, adv, mask, reduction="token")
    _close(loss, -(adv * mask.sum(1)).sum() / mask.sum())
    # beta = 0 needs no reference; a reference is required otherwise.
    _close(grpo_loss(old, old, None, adv, mask, beta=0.0)[0], -adv.mean())
    with pytest.raises(ValueError):
        grpo_loss(old, old, None, adv, mask, beta=0.04)
    with pytest.raises(ValueError):
        grpo_loss(old, old, old, adv, mask, reduction="mean")


@pytest.mark.parametrize("reduction", ["sequence", "token"])
def test_grpo_and_ppo_masked_out_row_changes_nothing(reduction):
    new, old, ref, adv, mask = _rl_inputs(15)
    pad = lambda x, v: np.concatenate([x, np.full((1,) + x.shape[1:], v, np.float32)])
    base = grpo_loss(new, old, ref, adv, mask, reduction=reduction)
    extra = grpo_loss(
        pad(new, -1.0), pad(old, -3.0), pad(ref, 0.0), pad(adv, 5.0), pad(mask, 0.0), reduction=reduction
    )
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(extra)):
        _close(a, b, 1e-6)
    base = ppo_clip_loss(new, old, adv, mask, reduction=reduction)
    extra = ppo_clip_loss(pad(new, -1.0), pad(old, -3.0), pad(adv, 5.0), pad(mask, 0.0), reduction=reduction)
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(extra)):
        _close(a, b, 1e-6)


def test_rl_helpers_moved_into_losses_match_their_formulas():
    """token_rewards (KL penalty + score at the last generated token), explained_variance, token_entropy,
    token_mean_nll and kto_reference_point on hand-checkable values."""
    from jaxalign import losses

    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], jnp.float32)
    kl = jnp.full((3, 4), 0.5) * mask
    r = losses.token_rewards(jnp.array([2.0, -1.0, 7.0]), kl, mask, 0.1)
    np.testing.assert_allclose(r, [[-0.05, -0.05, 1.95, 0.0], [-1.05, 0, 0, 0], [0, 0, 0, 0]], atol=1e-6)

    target = jnp.array([[1.0, 2.0, 3.0, 9.0]])
    m = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    assert float(losses.explained_variance(target, target, m)) == pytest.approx(1.0)
    # pred = mean: residual variance = Var(target) -> 0
    assert float(losses.explained_variance(jnp.full((1, 4), 2.0), target, m)) == pytest.approx(0.0, abs=1e-6)

    uniform = jnp.zeros((1, 2, 8))
    np.testing.assert_allclose(losses.token_entropy(uniform), np.log(8.0) * np.ones((1, 2)), rtol=1e-6)

    # summed: -(-3 - 5) / (2 + 3); averaged: -(-1.5*2 + -5/3*3) / 5
    assert float(losses.token_mean_nll(jnp.array([-3.0, -5.0]), jnp.array([2, 3]))) == pytest.approx(1.6)
    assert float(
        losses.token_mean_nll(jnp.array([-1.5, -5 / 3]), jnp.array([2, 3]), average=True)
    ) == pytest.approx(1.6, rel=1e-6)

    assert float(
        losses.kto_reference_point(jnp.array([-1.0, -2.0]), jnp.array([-2.0, -2.0]))
    ) == pytest.approx(0.5)
    assert float(losses.kto_reference_point(jnp.array([-3.0]), jnp.array([-1.0]))) == 0.0
    g = jax.grad(lambda p: losses.kto_reference_point(p, jnp.zeros(2)))(jnp.ones(2))
    np.testing.assert_array_equal(g, 0.0)
