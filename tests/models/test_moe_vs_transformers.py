"""Mixture-of-experts checkpoints (Mixtral, Qwen3-MoE) vs transformers: logits on padded rows, the export
reloaded by transformers, our routing against a dense reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_reference import (
    TOL,
    assert_matches_transformers,
    jax_forward,
    padded_batch,
    tiny_hf_model,
    torch_logits,
)

from jaxalign import models
from jaxalign.checkpoints import load_hf_model, save_hf_model


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_moe_logits_match_transformers(family):
    assert_matches_transformers(family)


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_moe_export_reloads_in_transformers(tmp_path, family):
    import transformers

    path, _ = tiny_hf_model(family)
    config, params = load_hf_model(path)
    save_hf_model(tmp_path, config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    reloaded.eval()
    rows, ids, pos, seg, slices = padded_batch(vocab=config.vocab_size)
    ours = np.asarray(jax_forward(config, params, ids, pos, seg))
    for i, (row, sl) in enumerate(zip(rows, slices)):
        assert np.abs(ours[i, sl] - torch_logits(reloaded, row)).max() <= TOL
    config2, params2 = load_hf_model(tmp_path)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_grouped_experts_equal_a_dense_loop_with_gradients():
    """The ragged (grouped) expert matmuls against every expert applied densely and masked by the routing."""
    cfg = models.ModelConfig(
        vocab_size=32,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=24,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=12,
    )
    moe = models.layers.MoE(cfg)
    x = jax.random.normal(jax.random.key(0), (10, 16))
    params = nn.meta.unbox(moe.init(jax.random.key(1), x)["params"])

    def dense(p, x):
        probs = jax.nn.softmax(x @ p["router"], axis=-1)
        w, idx = jax.lax.top_k(probs, 2)
        w = w / w.sum(-1, keepdims=True)
        out = 0.0
        for e in range(4):
            h = jax.nn.silu(x @ p["gate_proj"][e]) * (x @ p["up_proj"][e]) @ p["down_proj"][e]
            out = out + h * jnp.sum(jnp.where(idx == e, w, 0.0), -1, keepdims=True)
        return out

    ours = lambda p, x: moe.apply({"params": p}, x)  # noqa: E731
    np.testing.assert_allclose(ours(params, x), dense(params, x), atol=1e-5)
    g1 = jax.grad(lambda p: jnp.sum(ours(p, x) ** 2))(params)
    g2 = jax.grad(lambda p: jnp.sum(dense(p, x) ** 2))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), g1, g2)
