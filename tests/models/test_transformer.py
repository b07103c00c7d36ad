"""Model invariants without torch: attention paths agree, packing = separate forwards, KV-cache decoding
= full forward, scan/remat = plain, padding rows stay finite, bf16 runs, logical axes cover params."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models.attention import attention_causal_chunks
from jaxalign.models import (
    ModelConfig,
    Transformer,
    attention_reference,
    init_cache,
    init_params,
    param_logical_axes,
    segment_mask,
    stack_layers,
    unstack_layers,
)

CFG = ModelConfig(
    vocab_size=128,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=96,
    rope_type="llama3",
    rope_factor=8.0,
    rope_original_max_position_embeddings=16,
    initializer_range=0.1,
)


@functools.lru_cache(maxsize=None)
def _params():
    return init_params(CFG, jax.random.key(0))


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, ids, pos, seg):
    return Transformer(config).apply({"params": params}, ids, pos, seg)


def _ids(shape, seed=0):
    return np.random.default_rng(seed).integers(3, CFG.vocab_size, size=shape).astype(np.int32)


def test_dot_product_attention_matches_reference_and_grads():
    b, t, h, k, d = 2, 7, 4, 2, 8
    q, kk, v = (
        jax.random.normal(jax.random.key(i), s)
        for i, s in enumerate([(b, t, h, d), (b, t, k, d), (b, t, k, d)])
    )
    seg = jnp.array([[0, 0, 1, 1, 1, 2, 2], [1, 1, 1, 1, 0, 0, 0]])  # left pad + packing; right pad
    mask = segment_mask(seg)

    def run(fn, q, kk, v):
        return jax.jit(fn)(q, kk, v)

    fast = lambda q, kk, v: jax.nn.dot_product_attention(q, kk, v, mask=mask, scale=0.3, implementation="xla")
    ref = lambda q, kk, v: attention_reference(q, kk, v, mask, 0.3)
    out_fast, out_ref = run(fast, q, kk, v), run(ref, q, kk, v)
    assert np.isfinite(np.asarray(out_ref)).all()  # fully masked (pad) query rows must not be NaN
    real = np.asarray(seg != 0)
    np.testing.assert_allclose(np.asarray(out_fast)[real], np.asarray(out_ref)[real], atol=1e-5)
    weights = jnp.asarray(real, jnp.float32)[:, :, None, None]
    g_fast = jax.jit(jax.grad(lambda *a: jnp.sum(fast(*a) ** 2 * weights), argnums=(0, 1, 2)))(q, kk, v)
    g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(ref(*a) ** 2 * weights), argnums=(0, 1, 2)))(q, kk, v)
    for a, r in zip(g_fast, g_ref):
        assert np.isfinite(np.asarray(r)).all()
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-5, atol=1e-5)


def test_causal_chunked_attention_matches_reference_and_grads():
    b, t, h, k, d = 2, 150, 4, 2, 8  # 150: two full chunks of 64 and a partial one
    q, kk, v = (
        jax.random.normal(jax.random.key(i), s)
        for i, s in enumerate([(b, t, h, d), (b, t, k, d), (b, t, k, d)])
    )
    seg = np.zeros((b, t), np.int32)
    seg[0, 3:70], seg[0, 70:149] = 1, 2  # left pad, two packed sequences across chunks
    seg[1, :100] = 1  # right pad
    mask = segment_mask(jnp.asarray(seg))
    chunked = lambda q, kk, v: attention_causal_chunks(q, kk, v, mask, 0.3)
    ref = lambda q, kk, v: attention_reference(q, kk, v, mask, 0.3)
    real = seg != 0
    np.testing.assert_allclose(
        np.asarray(jax.jit(chunked)(q, kk, v))[real],
        np.asarray(jax.jit(ref)(q, kk, v))[real],
        rtol=1e-5,
        atol=1e-5,
    )
    weights = jnp.asarray(real, jnp.float32)[:, :, None, None]
    g_c = jax.jit(jax.grad(lambda *a: jnp.sum(chunked(*a) ** 2 * weights), argnums=(0, 1, 2)))(q, kk, v)
    g_r = jax.jit(jax.grad(lambda *a: jnp.sum(ref(*a) ** 2 * weights), argnums=(0, 1, 2)))(q, kk, v)
    for a, r in zip(g_c, g_r):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-5, atol=1e-5)
    # In the model: the chunked path (CPU default for rows longer than a chunk) gives XLA's logits.
    ids = _ids((b, t))
    pos = np.where(real, np.cumsum(real, 1) - 1, 0).astype(np.int32)
    cfg_c, cfg_x = (
        dataclasses.replace(CFG, attention_impl=i, max_position_embeddings=256) for i in ("chunked", "xla")
    )
    params = init_params(cfg_x, jax.random.key(0))
    out_c, out_x = (np.asarray(_forward(c, params, ids, pos, seg)) for c in (cfg_c, cfg_x))
    np.testing.assert_allclose(out_c[real], out_x[real], rtol=1e-5, atol=1e-5)


def test_reference_attention_impl_gives_same_logits():
    ids = _ids((2, 8))
    pos = np.tile(np.arange(8, dtype=np.int32), (2, 1))
    seg = np.ones((2, 8), np.int32)
    a = _forward(CFG, _params(), ids, pos, seg)
    b = _forward(CFG.replace(attention_impl="reference"), _params(), ids, pos, seg)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_packed_sequences_equal_separate_forwards():
    doc1, doc2 = _ids(5, seed=1), _ids(6, seed=2)
    ids = np.concatenate([doc1, doc2, [0]])[None].astype(np.int32)  # [1, 12], last = pad
    pos = np.concatenate([np.arange(5), np.arange(6), [0]])[None].astype(np.int32)
    seg = np.array([[1] * 5 + [2] * 6 + [0]], np.int32)
    packed = np.asarray(_forward(CFG, _params(), ids, pos, seg))[0]
    assert np.isfinite(packed).all()
    for doc, sl in ((doc1, slice(0, 5)), (doc2, slice(5, 11))):
        n = len(doc)
        alone = np.asarray(
            _forward(CFG, _params(), doc[None], np.arange(n, dtype=np.int32)[None], np.ones((1, n), np.int32))
        )[0]
        np.testing.assert_allclose(packed[sl], alone, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_decoding_matches_full_forward(scan):
    config = CFG.replace(scan_layers=scan)
    params = stack_layers(_params(), CFG.num_layers) if scan else _params()
    model = Transformer(config)
    b, p, new = 2, 6, 4
    lengths = [6, 3]  # row 1 left-padded
    prompt = np.zeros((b, p), np.int32)
    ppos = np.zeros((b, p), np.int32)
    pseg = np.zeros((b, p), np.int32)
    for i, n in enumerate(lengths):
        prompt[i, p - n :], ppos[i, p - n :], pseg[i, p - n :] = _ids(n, seed=10 + i), np.arange(n), 1
    gen = _ids((b, new), seed=20)
    full_ids = np.concatenate([prompt, gen], axis=1)
    full_pos = np.concatenate([ppos, np.array(lengths)[:, None] + np.arange(new)], axis=1).astype(np.int32)
    full_seg = np.concatenate([pseg, np.ones((b, new), np.int32)], axis=1)
    full = np.asarray(_forward(config, params, full_ids, full_pos, full_seg))

    step = jax.jit(lambda c, ids, pos, seg: model.apply({"params": params}, ids, pos, seg, cache=c))
    cache = init_cache(config, b, p + new)
    logits, cache = step(cache, prompt, ppos, pseg)  # prefill
    got = [np.asarray(logits)]
    for j in range(new):  # one token at a time
        logits, cache = step(
            cache, gen[:, j : j + 1], full_pos[:, p + j : p + j + 1], np.ones((b, 1), np.int32)
        )
        got.append(np.asarray(logits))
    got = np.concatenate(got, axis=1)
    assert int(cache["index"]) == p + new
    real = full_seg != 0
    np.testing.assert_allclose(got[real], full[real], atol=1e-5)


def test_scan_layers_and_remat_give_same_logits_and_grads():
    ids = _ids((2, 8))
    pos = np.tile(np.arange(8, dtype=np.int32), (2, 1))
    seg = np.array([[1] * 8, [0, 0] + [1] * 6], np.int32)
    base = np.asarray(_forward(CFG, _params(), ids, pos, seg))
    stacked = stack_layers(_params(), CFG.num_layers)
    assert jax.tree.map(jnp.shape, unstack_layers(stacked)) == jax.tree.map(jnp.shape, _params())

    def loss(config, params):
        logits = Transformer(config).apply({"params": params}, ids, pos, seg)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 3] * (seg != 0))

    g_base = jax.jit(jax.grad(functools.partial(loss, CFG)))(_params())
    for config, params in [
        (CFG.replace(remat=True, remat_policy="dots_saveable"), _params()),
        (CFG.replace(scan_layers=True, remat=True), stacked),
    ]:
        np.testing.assert_allclose(np.asarray(_forward(config, params, ids, pos, seg)), base, atol=1e-5)
        g = jax.jit(jax.grad(functools.partial(loss, config)))(params)
        if config.scan_layers:
            g = unstack_layers(g)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), g, g_base)


def test_fully_padded_rows_are_finite_with_finite_grads():
    ids = _ids((2, 6))
    pos = np.zeros((2, 6), np.int32)
    seg = np.array([[0] * 6, [1] * 6], np.int32)  # row 0: all padding
    logits = np.asarray(_forward(CFG, _params(), ids, pos, seg))
    assert np.isfinite(logits).all()
    grads = jax.jit(jax.grad(lambda p: jnp.sum(Transformer(CFG).apply({"params": p}, ids, pos, seg)[1])))(
        _params()
    )
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_bfloat16_compute_and_params():
    config = CFG.replace(dtype="bfloat16", param_dtype="bfloat16")
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
    ids = _ids((2, 8))
    pos = np.tile(np.arange(8, dtype=np.int32), (2, 1))
    seg = np.ones((2, 8), np.int32)
    out = _forward(config, params, ids, pos, seg)
    assert out.dtype == jnp.float32
    ref = np.asarray(_forward(CFG, _params(), ids, pos, seg))
    assert np.abs(np.asarray(out) - ref).max() < 0.1 * np.abs(ref).max()
    hidden = Transformer(config).apply({"params": params}, ids, pos, seg, hidden_only=True)
    assert hidden.dtype == jnp.bfloat16 and hidden.shape == (2, 8, CFG.hidden_size)


@pytest.mark.parametrize("scan", [False, True])
def test_every_param_has_logical_axes(scan):
    config = CFG.replace(scan_layers=scan, qkv_bias=True, qk_norm=True)
    axes = param_logical_axes(config)
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    is_axes = lambda x: isinstance(x, tuple)
    assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(shapes)
    for ax, s in zip(jax.tree.leaves(axes, is_leaf=is_axes), jax.tree.leaves(shapes)):
        assert len(ax) == len(s.shape)
        assert ax[0] == "layers" if scan and len(ax) > 1 and s.shape[0] == CFG.num_layers else True
    assert axes["embed"]["embedding"] == ("vocab", "embed")
