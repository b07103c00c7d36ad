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


def test_router_losses_by_hand():
    from jaxalign import losses

    # Uniform routing: every expert gets 1/E of each choice and probability 1/E: balance = k (= 2).
    logits = jnp.zeros((6, 4))
    experts = jnp.asarray([[0, 1], [2, 3], [0, 1], [2, 3], [0, 1], [2, 3]])
    balance, m = losses.router_losses(logits, experts, jnp.ones(6))
    np.testing.assert_allclose(balance, 2.0, rtol=1e-6)
    np.testing.assert_allclose(m["router/z"], np.log(4.0) ** 2, rtol=1e-6)
    np.testing.assert_allclose(m["router/load_max"], 0.25, rtol=1e-6)
    # Everything to expert 0 with certainty: f = (1, 0, 0, 0) for the first choice, P_0 ≈ 1: balance ≈ E.
    logits = jnp.asarray([[20.0, 0.0, 0.0, 0.0]] * 3)
    balance, m = losses.router_losses(logits, jnp.asarray([[0, 1]] * 3), jnp.asarray([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(balance, 4 * (1.0 * 1.0 + 1.0 * 0.0), atol=1e-6)  # padding row left out
    assert float(m["router/load_max"]) == 0.5


def test_the_router_loss_gradient_is_added_to_the_objective():
    from jaxalign import losses

    def f(w, with_aux):
        y = jnp.tanh(w) * 3.0
        aux = jnp.sum(w**2)
        return jnp.sum(losses.add_loss_gradient(y, aux) if with_aux else y)

    w = jnp.asarray([0.3, -0.2])
    g = jax.grad(f)(w, True)
    np.testing.assert_allclose(g, jax.grad(f)(w, False) + 2 * w, rtol=1e-6)
    assert float(f(w, True)) == float(f(w, False))  # the value is the objective's alone


@pytest.mark.parametrize("scan", [False, True])
def test_router_metrics_of_the_policy_forward(scan):
    """`objectives.with_router_metrics`: the loss is unchanged and its metrics gain the router's load per
    expert (summing to 1 over the experts, averaged over the layers), balance and z-loss, scanned
    layers or not."""
    from jaxalign.trainers import objectives

    cfg = models.ModelConfig(
        model_type="mixtral",
        vocab_size=50,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        intermediate_size=24,
        num_experts=4,
        num_experts_per_tok=2,
        scan_layers=scan,
    )
    model = models.Transformer(cfg)
    params = models.init_params(cfg, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 12), 1, 50)
    batch = {
        "input_ids": ids,
        "targets": jnp.roll(ids, -1, axis=1),
        "loss_mask": jnp.ones((2, 12)),
        "positions": jnp.broadcast_to(jnp.arange(12), (2, 12)),
        "segment_ids": jnp.ones((2, 12), jnp.int32),
    }
    plain = objectives.make_sft_loss(model, {})
    loss, metrics = jax.jit(objectives.with_router_metrics(plain))(params, None, batch)
    assert float(loss) == pytest.approx(float(plain(params, None, batch)[0]), rel=1e-6)
    loads = np.asarray([metrics[f"router/load/{e}"] for e in range(4)])
    assert loads.sum() == pytest.approx(1.0, abs=1e-5) and float(metrics["router/load_max"]) == loads.max()
    assert float(metrics["router/load_min"]) == loads.min() and float(metrics["router/balance"]) >= 0.99 * 2
    assert float(metrics["router/z"]) > 0


@pytest.mark.slow
def test_sft_and_dpo_train_a_moe_checkpoint(tmp_path):
    """A Mixtral checkpoint (the embedded tokenizer's vocabulary) through the one loop: SFT and DPO steps
    with a finite loss (the router's loss in the gradient)."""
    import os

    import torch
    import transformers

    from jaxalign import defaults
    from jaxalign.data import embedded
    from jaxalign.trainers import loop

    tok = embedded.load_tokenizer()
    cfg = transformers.MixtralConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=128,
        head_dim=8,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for name in ("sft", "dpo"):
        c = defaults.load_config_file(os.path.join(root, "configs", f"{name}.py"))
        with c.unlocked():
            c.model.path = str(tmp_path / "m")
            c.train.num_steps, c.train.log_every, c.train.eval_every = 6, 1, 0
            c.data.eval = ""
            c.train.export_hf = False
        out = loop.train_and_evaluate(c, str(tmp_path / name), devices=jax.devices()[:1])
        assert np.isfinite(out["train"]["train/loss"]), name
        loads = [out["train"][f"train/router/load/{e}"] for e in range(4)]  # per expert, logged
        assert sum(loads) == pytest.approx(1.0, abs=1e-5) and out["train"]["train/router/load_max"] == max(
            loads
        )
