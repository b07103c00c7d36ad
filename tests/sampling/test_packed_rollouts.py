"""Rollouts packed padding-free (data.batching.pack_rollout) score and train exactly as padded rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses, models
from jaxalign.data.batching import pack_rollout
from jaxalign.sampling import generate, left_pad
from jaxalign.sampling import scoring

from test_generate import CFG  # noqa: E402  (the same tiny decisive model)


@pytest.fixture(scope="module")
def rollout():
    model = models.Transformer(CFG)
    params = jax.jit(models.init_params, static_argnums=0)(CFG, jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = left_pad([list(rng.integers(4, 60, rng.integers(1, 8))) for _ in range(12)], pad_id=0)
    out = generate(
        model,
        params,
        batch["prompt_ids"],
        batch["prompt_segment_ids"],
        jax.random.key(1),
        max_new_tokens=10,
        eos_ids=(3, 9, 17, 30),
    )
    ro = {
        "prompt_ids": jnp.asarray(batch["prompt_ids"]),
        "prompt_segment_ids": jnp.asarray(batch["prompt_segment_ids"]),
        "tokens": out.tokens,
        "mask": out.mask,
    }
    ro["mask"] = ro["mask"].at[5].set(0)  # a row with nothing generated (batch padding) is left out
    return model, params, ro, out


def _packed(ro, units):
    host = {k: np.asarray(v) for k, v in ro.items()}
    layout, rows = pack_rollout(
        host["prompt_ids"], host["prompt_segment_ids"], host["tokens"], host["mask"], units
    )
    return {**ro, **{k: jnp.asarray(v) for k, v in layout.items()}}, rows


def test_layout_saves_rows_and_keeps_units_apart(rollout):
    _, _, ro, out = rollout
    perm = np.random.default_rng(1).permutation(12).reshape(2, 6)
    packed, rows = _packed(ro, list(perm))
    assert rows < 6  # fewer rows per unit than sequences
    width = ro["prompt_ids"].shape[1] + ro["tokens"].shape[1] - 1
    index = np.asarray(packed["packed_index"])
    for u, members in enumerate(perm):  # a unit's completions are predicted inside its own packed rows
        m = np.asarray(ro["mask"])[members] > 0
        assert np.all(index[members][m] // width // rows == u)


@pytest.mark.parametrize("units", [1, 3])
def test_packed_logprobs_equal_padded(rollout, units):
    model, params, ro, out = rollout
    perm = np.arange(12).reshape(units, -1)
    packed, _ = _packed(ro, list(perm))
    padded, _ = scoring.completion_logprobs(model, params, ro)
    got, _ = scoring.completion_logprobs(model, params, packed)
    np.testing.assert_allclose(got, padded, atol=2e-5)
    # ... and both equal the sampler's own log-probs (rows with a completion).
    keep = np.asarray(ro["mask"]).any(-1)
    np.testing.assert_allclose(np.asarray(got)[keep], np.asarray(out.model_logprobs)[keep], atol=2e-4)


def test_units_round_trip_and_gradient_equal_padded(rollout):
    """split_units then merge_units (the update's path) gives the padded loss and gradient."""
    model, params, ro, _ = rollout
    perm = np.random.default_rng(2).permutation(12).reshape(3, 4).astype(np.int32)
    packed, _ = _packed(ro, list(perm))
    adv = jnp.linspace(-1.0, 1.0, 12)
    packed["advantages"], ro = adv, {**ro, "advantages": adv}

    def loss(p, batch):
        batch = scoring.merge_units(batch)
        lp, _ = scoring.completion_logprobs(model, p, batch)
        return losses.grpo_loss(
            lp, jax.lax.stop_gradient(lp), None, batch["advantages"], batch["mask"], beta=0.0
        )[0]

    units = scoring.split_units(packed, jnp.asarray(perm))
    assert units["packed_ids"].shape[0] == 3 and units["tokens"].shape[:2] == (3, 4)
    (l1, g1), (l2, g2) = (jax.value_and_grad(loss)(params, b) for b in (ro, units))
    np.testing.assert_allclose(l2, l1, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g2, g1)


def test_a_minibatch_of_units_equals_its_rows_padded(rollout):
    """The update's minibatch takes some units, in any order (`trainers.step`): the same as those rows."""
    model, params, ro, _ = rollout
    perm = np.random.default_rng(3).permutation(12).reshape(3, 4).astype(np.int32)
    packed, _ = _packed(ro, list(perm))
    units = scoring.split_units(packed, jnp.asarray(perm))
    pick = jnp.asarray([2, 0])
    mb = scoring.merge_units(jax.tree.map(lambda x: jnp.take(x, pick, axis=0), units))
    rows = np.concatenate([perm[2], perm[0]])
    padded = {
        k: jnp.take(ro[k], rows, axis=0) for k in ("prompt_ids", "prompt_segment_ids", "tokens", "mask")
    }
    w = jax.random.normal(jax.random.key(4), padded["mask"].shape)

    def f(p, b):
        return jnp.sum(scoring.completion_logprobs(model, p, b)[0] * w)

    (l1, g1), (l2, g2) = (jax.value_and_grad(f)(params, b) for b in (padded, mb))
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g2, g1)


@pytest.fixture(scope="module")
def groups(rollout):
    """4 prompts × 3 samples each (rows [3i, 3i+3) share prompt i), with its shared-prompt layout."""
    model, params, _, _ = rollout
    rng = np.random.default_rng(5)
    batch = left_pad([list(rng.integers(4, 60, rng.integers(1, 8))) for _ in range(4)], pad_id=0)
    out = generate(
        model,
        params,
        batch["prompt_ids"],
        batch["prompt_segment_ids"],
        jax.random.key(2),
        max_new_tokens=10,
        eos_ids=(3, 9, 17, 30),
        num_samples=3,
    )
    ro = {
        "prompt_ids": jnp.repeat(jnp.asarray(batch["prompt_ids"]), 3, axis=0),
        "prompt_segment_ids": jnp.repeat(jnp.asarray(batch["prompt_segment_ids"]), 3, axis=0),
        "tokens": out.tokens,
        "mask": out.mask,
    }
    shared = {
        **ro,
        "shared_prompt_ids": jnp.asarray(batch["prompt_ids"]),
        "shared_prompt_segment_ids": jnp.asarray(batch["prompt_segment_ids"]),
    }
    return model, params, ro, shared, out


def test_shared_prompt_logprobs_equal_padded(groups):
    model, params, ro, shared, out = groups
    padded, _ = scoring.completion_logprobs(model, params, ro)
    got, _ = scoring.completion_logprobs(model, params, shared)
    np.testing.assert_allclose(got, padded, atol=2e-5)
    np.testing.assert_allclose(got, out.model_logprobs, atol=2e-4)


def test_shared_prompt_units_gradient_equal_padded(groups):
    """Two units of two whole groups each, one of them as a minibatch: the padded rows' gradient."""
    model, params, ro, shared, _ = groups
    order = np.asarray([3, 1, 0, 2])  # groups in random order, whole groups per unit
    perm = (order[:, None] * 3 + np.arange(3)).reshape(2, 6).astype(np.int32)
    units = scoring.split_units(shared, jnp.asarray(perm))
    assert units["shared_prompt_ids"].shape[:2] == (2, 2)
    mb = scoring.merge_units(jax.tree.map(lambda x: x[1:], units))  # the second unit: groups 0 and 2
    rows = perm[1]
    padded = {k: jnp.take(ro[k], rows, axis=0) for k in ro}
    w = jax.random.normal(jax.random.key(6), padded["mask"].shape)

    def f(p, b):
        return jnp.sum(scoring.completion_logprobs(model, p, b)[0] * w)

    (l1, g1), (l2, g2) = (jax.value_and_grad(f)(params, b) for b in (padded, mb))
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g2, g1
    )  # grads up to ~10
