"""reward_bt_loss, dpo_loss, orpo_loss, simpo_loss, kto_loss against float64 NumPy loops, and hand cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.losses import DPO_LOSS_TYPES, LOSSES, dpo_loss, kto_loss, orpo_loss, reward_bt_loss, simpo_loss

N = 7


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def sigmoid(x):
    return math.exp(log_sigmoid(x))


def _seq_logps(seed, n=N, scale=20.0):
    rng = np.random.default_rng(seed)
    return [(-scale * rng.random(n) - 1.0).astype(np.float32) for _ in range(4)]


def _close(got, want, tol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


def _check(result, want_loss, want_metrics, tol=1e-5):
    loss, metrics = result
    assert loss.shape == () and loss.dtype == jnp.float32
    _close(loss, want_loss, tol)
    assert set(metrics) >= set(want_metrics), set(want_metrics) - set(metrics)
    for k, v in want_metrics.items():
        assert metrics[k].shape == () and metrics[k].dtype == jnp.float32, k
        np.testing.assert_allclose(float(metrics[k]), v, rtol=tol, atol=tol, err_msg=k)


# ---------------------------------------------------------------------------------------------- reward


def ref_reward(rc, rr, margin=None, center_coef=0.0):
    n = len(rc)
    losses, center = [], []
    for i in range(n):
        m = 0.0 if margin is None else float(margin[i])
        losses.append(-log_sigmoid(float(rc[i]) - float(rr[i]) - m))
        center.append((float(rc[i]) + float(rr[i])) ** 2)
    loss = sum(losses) / n + center_coef * sum(center) / n
    both = [float(x) for x in rc] + [float(x) for x in rr]
    return loss, {
        "accuracy": sum(float(rc[i]) > float(rr[i]) for i in range(n)) / n,
        "margin": sum(float(rc[i]) - float(rr[i]) for i in range(n)) / n,
        "mean_reward": sum(both) / len(both),
        "min_reward": min(both),
        "max_reward": max(both),
    }


@pytest.mark.parametrize("with_margin,center_coef", [(False, 0.0), (True, 0.0), (True, 0.01)])
def test_reward_bt_matches_reference(with_margin, center_coef):
    rng = np.random.default_rng(0)
    rc, rr, margin = (rng.standard_normal(N).astype(np.float32) * 3 for _ in range(3))
    margin = np.abs(margin) if with_margin else None
    got = jax.jit(reward_bt_loss, static_argnames=())(rc, rr, margin, center_coef=center_coef)
    _check(got, *ref_reward(rc, rr, margin, center_coef))


def test_reward_bt_hand_cases():
    r = np.array([0.5, -1.0], np.float32)
    _close(reward_bt_loss(r, r)[0], math.log(2))  # equal rewards: log 2
    _close(reward_bt_loss(r, r, margin=np.array([1.0, 1.0]))[0], -log_sigmoid(-1.0))
    _close(
        reward_bt_loss(r, -r, center_coef=1.0)[0],  # centred pairs: no penalty
        np.mean([-log_sigmoid(1.0), -log_sigmoid(-2.0)]),
    )
    assert reward_bt_loss(np.array([100.0]), np.array([-100.0]))[0] < 1e-6
    assert np.isfinite(reward_bt_loss(np.array([-100.0]), np.array([100.0]))[0])  # no log(0)


def test_reward_bt_accepts_column_rewards():
    rng = np.random.default_rng(1)
    rc, rr = rng.standard_normal((2, N, 1)).astype(np.float32)
    _check(reward_bt_loss(rc, rr), *ref_reward(rc[:, 0], rr[:, 0]))


# ------------------------------------------------------------------------------------------------- DPO


def ref_dpo(pc, pr, rc, rr, beta, loss_type, eps):
    losses, cr, rj = [], [], []
    for i in range(len(pc)):
        z = (float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i]))
        if loss_type == "sigmoid":
            l = -(1 - eps) * log_sigmoid(beta * z) - eps * log_sigmoid(-beta * z)
        elif loss_type == "ipo":
            l = (z - 1 / (2 * beta)) ** 2
        elif loss_type == "hinge":
            l = max(0.0, 1 - beta * z)
        else:
            l = (-(1 - eps) * log_sigmoid(beta * z) + eps * log_sigmoid(-beta * z)) / (1 - 2 * eps)
        losses.append(l)
        cr.append(beta * (float(pc[i]) - float(rc[i])))
        rj.append(beta * (float(pr[i]) - float(rr[i])))
    n = len(pc)
    return sum(losses) / n, {
        "rewards/chosen": sum(cr) / n,
        "rewards/rejected": sum(rj) / n,
        "rewards/accuracies": sum(c > r for c, r in zip(cr, rj)) / n,
        "rewards/margins": sum(c - r for c, r in zip(cr, rj)) / n,
        "logps/chosen": float(np.mean(pc.astype(np.float64))),
        "logps/rejected": float(np.mean(pr.astype(np.float64))),
    }


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2)])
def test_dpo_matches_reference(loss_type, beta, eps):
    pc, pr, rc, rr = _seq_logps(10 * DPO_LOSS_TYPES.index(loss_type) + int(10 * beta))
    f = jax.jit(dpo_loss, static_argnames=("loss_type",))
    got = f(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    _check(got, *ref_dpo(pc, pr, rc, rr, beta, loss_type, eps))


def test_dpo_policy_equals_reference():
    pc, pr, _, _ = _seq_logps(1)
    loss, m = dpo_loss(pc, pr, pc, pr, beta=0.1)
    _close(loss, math.log(2))
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert m[k] == 0.0, k
    # ... for every label smoothing too; the hinge loss is 1 there.
    _close(dpo_loss(pc, pr, pc, pr, label_smoothing=0.3)[0], math.log(2))
    _close(dpo_loss(pc, pr, pc, pr, loss_type="hinge")[0], 1.0)


def test_ipo_optimum_and_hinge_margin():
    beta = 0.25
    ref = np.array([-3.0, -5.0], np.float32)
    target = 1 / (2 * beta)  # IPO's optimum: z = 1/(2β)
    pc = ref + np.float32(target)
    loss, _ = dpo_loss(pc, ref, ref, ref, beta=beta, loss_type="ipo")
    _close(loss, 0.0)
    g = jax.grad(lambda p: dpo_loss(p, ref, ref, ref, beta=beta, loss_type="ipo")[0])(pc)
    _close(g, np.zeros(2))
    # hinge: zero once βz >= 1
    pc = ref + np.float32(1 / beta + 0.5)
    assert dpo_loss(pc, ref, ref, ref, beta=beta, loss_type="hinge")[0] == 0.0


def test_robust_dpo_is_unbiased_under_label_flips():
    """rDPO: E_flip[L_robust] = (1 - ε) L(z) + ε L(-z) equals the clean DPO loss -log σ(βz)."""
    pc, pr, rc, rr = _seq_logps(3)
    eps, beta = 0.2, 0.1
    rob = lambda a, b, c, d: dpo_loss(a, b, c, d, beta=beta, loss_type="robust", label_smoothing=eps)[0]
    expected = (1 - eps) * rob(pc, pr, rc, rr) + eps * rob(pr, pc, rr, rc)
    _close(expected, dpo_loss(pc, pr, rc, rr, beta=beta)[0], 1e-5)
    _close(dpo_loss(pc, pr, rc, rr, loss_type="robust")[0], dpo_loss(pc, pr, rc, rr)[0])  # ε = 0: DPO


def test_dpop_hand_case_and_gradient():
    """DPOP by hand: the chosen log-prob 2 nats below the reference's, λ = 5, β = 0.5:
    z = (-2 - 0) - (-6 - (-1)) = 3, z' = 3 - 5 · 2 = -7, loss = -log σ(-3.5); a chosen log-prob above the
    reference's is not penalised; the penalty's gradient pushes the chosen log-prob up."""
    args = (jnp.array([-12.0]), jnp.array([-16.0]), jnp.array([-10.0]), jnp.array([-11.0]))
    loss, m = dpo_loss(*args, beta=0.5, dpop_lambda=5.0)
    assert float(loss) == pytest.approx(-math.log(1.0 / (1.0 + math.exp(3.5))), rel=1e-6)
    assert float(m["dpop/penalty"]) == pytest.approx(2.0) and float(m["logps/chosen_shift"]) == pytest.approx(
        -2.0
    )
    plain, _ = dpo_loss(*args, beta=0.5)
    assert float(plain) == pytest.approx(-math.log(1.0 / (1.0 + math.exp(-1.5))), rel=1e-6)
    up = (jnp.array([-9.0]),) + args[1:]  # chosen above the reference: no penalty, same as DPO
    assert float(dpo_loss(*up, beta=0.5, dpop_lambda=5.0)[0]) == pytest.approx(
        float(dpo_loss(*up, beta=0.5)[0])
    )
    # d loss / d log π(y_c) = -β (1 + λ) σ(-β z'): more negative than plain DPO's -β σ(-β z)
    g = jax.grad(lambda pc: dpo_loss(pc, *args[1:], beta=0.5, dpop_lambda=5.0)[0])(args[0])
    assert float(g[0]) == pytest.approx(-0.5 * 6.0 / (1.0 + math.exp(-3.5)), rel=1e-5)


def test_dpo_no_gradient_through_reference():
    pc, pr, rc, rr = _seq_logps(4)
    g = jax.grad(lambda r: dpo_loss(pc, pr, r, rr)[0])(rc)
    assert np.all(g == 0.0)


def test_dpo_rejects_unknown_type_and_bad_smoothing():
    pc, pr, rc, rr = _seq_logps(5)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(pc, pr, rc, rr, loss_type="robust", label_smoothing=0.5)


def test_dpo_extreme_logits_are_finite():
    big = np.array([500.0, -500.0], np.float32)
    zero = np.zeros(2, np.float32)
    for lt in DPO_LOSS_TYPES:
        loss, _ = dpo_loss(big, -big, zero, zero, beta=1.0, loss_type=lt, label_smoothing=0.1)
        assert np.isfinite(loss), lt


# ---------------------------------------------------------------------------------------- ORPO / SimPO


def ref_orpo(pc, pr, nll, beta):
    ratios, log_odds = [], []
    for c, r in zip(pc.astype(np.float64), pr.astype(np.float64)):
        lo = (c - r) - (math.log(1 - math.exp(c)) - math.log(1 - math.exp(r)))
        log_odds.append(lo)
        ratios.append(log_sigmoid(lo))
    n = len(pc)
    cr, rj = beta * pc.astype(np.float64), beta * pr.astype(np.float64)
    return nll - beta * sum(ratios) / n, {
        "rewards/chosen": cr.mean(),
        "rewards/rejected": rj.mean(),
        "rewards/accuracies": (cr > rj).mean(),
        "rewards/margins": (cr - rj).mean(),
        "logps/chosen": pc.mean(),
        "logps/rejected": pr.mean(),
        "nll_loss": nll,
        "log_odds_ratio": sum(ratios) / n,
        "log_odds_chosen": sum(log_odds) / n,
    }


def test_orpo_matches_reference():
    rng = np.random.default_rng(6)
    pc = (-3 * rng.random(N) - 0.05).astype(np.float32)  # average log-probs, some close to 0
    pr = (-3 * rng.random(N) - 0.05).astype(np.float32)
    nll = np.float32(1.7)
    _check(jax.jit(orpo_loss)(pc, pr, nll, beta=0.1), *ref_orpo(pc, pr, float(nll), 0.1))
    _check(orpo_loss(pc, pr, nll, beta=0.5), *ref_orpo(pc, pr, float(nll), 0.5))


def test_orpo_hand_cases():
    p = np.array([-0.5, -2.0], np.float32)
    _close(orpo_loss(p, p, 1.0, beta=0.1)[0], 1.0 + 0.1 * math.log(2))  # equal odds: σ(0) = 1/2
    # Stable near p = 1 (log-prob -> 0) and p = 0 (log-prob -> -inf).
    pc, pr = np.array([-1e-6, -80.0], np.float32), np.array([-80.0, -1e-6], np.float32)
    loss, m = orpo_loss(pc, pr, 0.0)
    assert np.isfinite(loss) and np.isfinite(m["log_odds_chosen"])
    g = jax.grad(lambda x: orpo_loss(x, pr, 0.0)[0])(pc)
    assert np.all(np.isfinite(g))


def ref_simpo(pc, pr, beta, gamma, eps):
    losses = []
    for c, r in zip(pc.astype(np.float64), pr.astype(np.float64)):
        z = beta * (c - r) - gamma
        losses.append(-(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z))
    cr, rj = beta * pc.astype(np.float64), beta * pr.astype(np.float64)
    return sum(losses) / len(losses), {
        "rewards/chosen": cr.mean(),
        "rewards/rejected": rj.mean(),
        "rewards/accuracies": (cr > rj).mean(),
        "rewards/margins": (cr - rj).mean(),
        "logps/chosen": pc.mean(),
        "logps/rejected": pr.mean(),
    }


@pytest.mark.parametrize("beta,gamma,eps", [(2.0, 1.0, 0.0), (0.1, 0.5, 0.0), (2.5, 1.4, 0.1)])
def test_simpo_matches_reference(beta, gamma, eps):
    rng = np.random.default_rng(7)
    pc, pr = (-3 * rng.random((2, N))).astype(np.float32)
    got = jax.jit(simpo_loss)(pc, pr, beta=beta, gamma=gamma, label_smoothing=eps)
    _check(got, *ref_simpo(pc, pr, beta, gamma, eps))


def test_simpo_gamma_conventions():
    rng = np.random.default_rng(8)
    pc, pr = (-3 * rng.random((2, N))).astype(np.float32)
    default = simpo_loss(pc, pr)[0]  # β = 2, γ/β = 0.5 -> γ = 1
    _close(default, ref_simpo(pc, pr, 2.0, 1.0, 0.0)[0])
    _close(simpo_loss(pc, pr, beta=2.5, gamma_beta_ratio=0.4)[0], simpo_loss(pc, pr, beta=2.5, gamma=1.0)[0])
    with pytest.raises(ValueError):
        simpo_loss(pc, pr, gamma=1.0, gamma_beta_ratio=0.5)
    # At equal average log-probs the loss is -log σ(-γ).
    _close(simpo_loss(pc, pc, beta=2.0, gamma=1.0)[0], -log_sigmoid(-1.0))


# ------------------------------------------------------------------------------------------------- KTO


def ref_kto(pol, ref, labels, kl, beta, wd, wu):
    z0 = max(float(kl), 0.0)
    losses, rc, rr, lc, lr = [], [], [], [], []
    for p, r, y in zip(pol.astype(np.float64), ref.astype(np.float64), labels):
        lr_ = p - r
        if y:
            losses.append(wd * (1 - sigmoid(beta * (lr_ - z0))))
            rc.append(beta * lr_)
            lc.append(p)
        else:
            losses.append(wu * (1 - sigmoid(beta * (z0 - lr_))))
            rr.append(beta * lr_)
            lr.append(p)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
    return sum(losses) / len(losses), {
        "kl": z0,
        "rewards/chosen": mean(rc),
        "rewards/rejected": mean(rr),
        "rewards/margins": mean(rc) - mean(rr),
        "logps/chosen": mean(lc),
        "logps/rejected": mean(lr),
        "count/chosen": len(rc),
        "count/rejected": len(rr),
    }


@pytest.mark.parametrize("kl,wd,wu", [(0.3, 1.0, 1.0), (-0.2, 1.0, 1.33), (2.0, 0.7, 1.0)])
def test_kto_matches_reference(kl, wd, wu):
    pol, ref, _, _ = _seq_logps(9, n=8, scale=5.0)
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)
    got = jax.jit(kto_loss)(
        pol, ref, labels, np.float32(kl), beta=0.1, desirable_weight=wd, undesirable_weight=wu
    )
    _check(got, *ref_kto(pol, ref, labels, kl, 0.1, wd, wu))


def test_kto_hand_cases():
    pol = np.array([-3.0, -4.0], np.float32)
    # log-ratio equal to the reference point: every example's loss is 1/2 (times its weight).
    loss, m = kto_loss(
        pol, pol - 0.5, np.array([1.0, 0.0]), 0.5, desirable_weight=1.0, undesirable_weight=3.0
    )
    _close(loss, (0.5 + 1.5) / 2)
    # Only desirable examples: rejected metrics are 0, not NaN; bool labels work.
    loss, m = kto_loss(pol, pol, np.array([True, True]), 0.0)
    assert m["rewards/rejected"] == 0.0 and m["count/rejected"] == 0.0 and m["count/chosen"] == 2.0
    # The reference point is detached.
    g = jax.grad(lambda k: kto_loss(pol, pol - 1.0, np.array([1.0, 0.0]), k)[0])(0.3)
    assert g == 0.0


def test_losses_table():
    assert set(LOSSES) >= {"clm", "sft", "reward", "dpo", "orpo", "simpo", "kto", "ppo", "grpo"}
    assert LOSSES["dpo"] is dpo_loss and DPO_LOSS_TYPES == ("sigmoid", "ipo", "hinge", "robust")
