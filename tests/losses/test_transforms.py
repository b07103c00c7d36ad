"""Every loss under jit, vmap, bf16 inputs and an 8-device batch sharding agrees with eager float32, and its
gradient agrees with finite differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

from jaxalign import losses as L

B, T, V = 8, 5, 11  # B divides over the 8 CPU devices of tests/conftest.py


def _away_from(x, kinks, gap=0.02):
    """Move values within `gap` of a kink (a clip boundary) off it, so finite differences see a smooth function."""
    for k in kinks:
        near = np.abs(x - k) < gap
        x = np.where(near, k + np.where(x >= k, gap, -gap), x)
    return x.astype(np.float32)


def _make_inputs(seed):
    rng = np.random.default_rng(seed)
    f = lambda *shape, scale=1.0, shift=0.0: (scale * rng.standard_normal(shape) + shift).astype(np.float32)
    mask = (rng.random((B, T)) < 0.75).astype(np.float32)
    mask[:, 0] = 1.0
    mask[3] = 0.0  # one fully masked row
    old = -np.abs(f(B, T, shift=1.0))
    return {
        "logits": f(B, T, V, scale=2.0),
        "targets": rng.integers(0, V, (B, T)).astype(np.int32),
        "mask": mask,
        "seq": [-np.abs(f(B, scale=5.0, shift=10.0)) for _ in range(4)],  # summed log-probs
        "avg": [-np.abs(f(B, scale=0.5, shift=1.0)) - 0.05 for _ in range(2)],  # average log-probs
        "rewards": [f(B) for _ in range(3)],
        "labels": (rng.random(B) < 0.5).astype(np.float32),
        "old": old,
        # log-ratios away from the PPO/GRPO clip boundaries 1 ± 0.2 and 1.28
        "new": old + _away_from(f(B, T, scale=0.3), np.log([0.8, 1.2, 1.28])),
        "ref": old + f(B, T, scale=0.3),
        "tok_adv": f(B, T),
        "values": old + _away_from(f(B, T), [-0.2, 0.2]),  # value changes away from the clip ±0.2
        "returns": f(B, T),
    }


def _several(*fns):
    """Several losses of the same inputs in one function: one compilation covers them all."""
    return lambda *args: tuple(f(*args) for f in fns)


_DPO = [functools.partial(L.dpo_loss, beta=0.1, loss_type=t, label_smoothing=0.1) for t in L.DPO_LOSS_TYPES]

# name -> (function of arrays returning a pytree, inputs(x) -> tuple of arrays, argnums to differentiate)
CASES = {
    "clm_sft_sequence_logprobs": (
        _several(
            functools.partial(L.clm_loss, z_loss=1e-3),
            L.sft_loss,
            functools.partial(L.sequence_logprobs, average=True),
        ),
        lambda x: (x["logits"], x["targets"], x["mask"]),
        (0,),
    ),
    "reward": (
        functools.partial(L.reward_bt_loss, center_coef=0.01),
        lambda x: (x["rewards"][0], x["rewards"][1], np.abs(x["rewards"][2])),
        (0, 1),
    ),
    "dpo_sigmoid_ipo_hinge_robust": (_several(*_DPO), lambda x: tuple(x["seq"]), (0, 1)),
    "orpo": (functools.partial(L.orpo_loss, beta=0.1), lambda x: (*x["avg"], -x["seq"][0] / 10), (0, 1, 2)),
    "simpo": (
        functools.partial(L.simpo_loss, beta=2.0, gamma=1.0, label_smoothing=0.1),
        lambda x: tuple(x["avg"]),
        (0, 1),
    ),
    "kto": (
        functools.partial(L.kto_loss, beta=0.1, undesirable_weight=1.3),
        lambda x: (x["seq"][0], x["seq"][1], x["labels"], np.float32(0.4)),
        (0,),
    ),
    "ppo_token_sequence": (
        _several(
            functools.partial(L.ppo_clip_loss, reduction="token"),
            lambda new, old, adv, m: L.ppo_clip_loss(new, old, adv[:, 0], m, reduction="sequence"),
        ),
        lambda x: (x["new"], x["old"], x["tok_adv"], x["mask"]),
        (0,),
    ),
    "value": (L.value_loss, lambda x: (x["values"], x["old"], x["returns"], x["mask"]), (0,)),
    "gae": (
        functools.partial(L.gae, gamma=0.99, lam=0.95),
        lambda x: (x["rewards"][0][:, None] * x["mask"], x["values"], x["mask"]),
        (0, 1),
    ),
    "kl_penalty_k3": (functools.partial(L.kl_penalty, kind="k3"), lambda x: (x["new"], x["ref"]), (0, 1)),
    "grpo_sequence_token": (
        _several(
            functools.partial(L.grpo_loss, beta=0.04, reduction="sequence"),
            lambda new, old, ref, adv, m: L.grpo_loss(
                new, old, ref, adv[:, :1] + 0 * adv, m, beta=0.04, reduction="token", clip_eps_high=0.28
            ),
        ),
        lambda x: (x["new"], x["old"], x["ref"], x["tok_adv"], x["mask"]),
        (0,),
    ),
    "group_and_rloo_advantages": (
        _several(
            functools.partial(L.group_advantages, group_size=4),
            functools.partial(L.rloo_advantages, group_size=2),
        ),
        lambda x: (x["rewards"][0],),
        (0,),
    ),
}


def _losses_only(out):
    """Drop the metrics: a (loss, metrics) pair becomes its loss, anywhere in the output."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        return out[0]
    if isinstance(out, tuple):
        return tuple(_losses_only(o) for o in out)
    return out


def _assert_tree_close(got, want, rtol, atol, what):
    got_flat, got_def = jax.tree.flatten(got)
    want_flat, want_def = jax.tree.flatten(want)
    assert got_def == want_def, what
    for path, g, w in zip(jax.tree_util.tree_flatten_with_path(want)[0], got_flat, want_flat):
        assert np.asarray(g).dtype == np.float32, (what, path[0])
        np.testing.assert_allclose(
            np.asarray(g), np.asarray(w), rtol=rtol, atol=atol, err_msg=f"{what} {path[0]}"
        )


def _is_float(a):
    return np.issubdtype(np.asarray(a).dtype, np.floating)


@pytest.fixture(scope="module")
def mesh():
    assert len(jax.devices()) == 8, "tests/conftest.py should give 8 CPU devices"
    return Mesh(np.array(jax.devices()), ("batch",))


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_vmap_bf16_and_sharding_agree_with_eager(name, mesh):
    fn, make, _ = CASES[name]
    args = make(_make_inputs(0))
    eager = fn(*args)
    for leaf in jax.tree.leaves(eager):
        assert leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf)), name

    _assert_tree_close(jax.jit(fn)(*args), eager, 1e-6, 1e-6, "jit")

    # vmap over a stack of two independent batches = one call per batch.
    args2 = make(_make_inputs(1))
    stacked = tuple(np.stack([a, b]) for a, b in zip(args, args2))
    batched = jax.jit(jax.vmap(fn))(*stacked)
    for i, single in enumerate((eager, fn(*args2))):
        _assert_tree_close(jax.tree.map(lambda x: x[i], batched), single, 1e-5, 1e-6, f"vmap[{i}]")

    # bf16 inputs are computed in float32: exactly the float32 result on the rounded inputs, close to the
    # unrounded one.
    bf = tuple(jnp.asarray(a, jnp.bfloat16) if _is_float(a) else a for a in args)
    out_bf = jax.jit(fn)(*bf)
    rounded = tuple(a.astype(jnp.float32) if _is_float(a) else a for a in bf)
    _assert_tree_close(out_bf, jax.jit(fn)(*rounded), 1e-5, 1e-6, "bf16 vs rounded float32")
    for loss_bf, loss_32 in zip(jax.tree.leaves(_losses_only(out_bf)), jax.tree.leaves(_losses_only(eager))):
        np.testing.assert_allclose(
            np.asarray(loss_bf), np.asarray(loss_32), rtol=5e-2, atol=5e-2, err_msg="bf16"
        )

    # Inputs sharded over the batch axis on 8 devices give the same values.
    shard = lambda a: jax.device_put(a, NamedSharding(mesh, P("batch") if np.ndim(a) else P()))
    sharded = tuple(shard(a) for a in args)
    _assert_tree_close(jax.jit(fn)(*sharded), eager, 1e-5, 1e-6, "sharded")


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_finite_differences(name):
    fn, make, argnums = CASES[name]
    args = make(_make_inputs(2))

    def scalar_fn(*diff_args):
        full = list(args)
        for i, a in zip(argnums, diff_args):
            full[i] = a
        return _losses_only(fn(*full))

    # float32 central differences: eps 1e-3 and a 1e-2 tolerance (x64 is not enabled in this process).
    check_grads(
        scalar_fn, tuple(args[i] for i in argnums), order=1, modes=("rev",), eps=1e-3, atol=1e-2, rtol=1e-2
    )
