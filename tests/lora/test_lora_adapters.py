"""LoRA adapters: initial model = base, merged = unmerged, reference = base, only adapters train,
sharded = single-device, target selection and dropout."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from lora_torch_reference import perturb, random_params, token_batch

from jaxalign import lora
from jaxalign.models import ModelConfig, Transformer, init_params, param_logical_axes
from jaxalign.sharding import logical_to_shardings, make_mesh

CFG = ModelConfig(
    vocab_size=128,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=96,
    norm_eps=1e-5,
)


@functools.lru_cache(maxsize=None)
def _setup(scan_layers=False, remat=False, lora_cfg=lora.LoraConfig(rank=4, alpha=8.0)):
    """(config, model, base params, fresh adapters), built once per variant."""
    config = CFG.replace(scan_layers=scan_layers, remat=remat)
    model = Transformer(config)
    params = random_params(config)
    adapters = jax.jit(lambda k: lora.init_lora(model, params, lora_cfg, k))(jax.random.key(1))
    return config, model, params, adapters


BATCH = token_batch(b=4, t=8, seed=3)  # (input_ids, positions, segment_ids) [4, 8]; one shape: few compiles


@functools.lru_cache(maxsize=None)
def _forward(model, lora_cfg):
    return jax.jit(
        lambda p, a, ids, pos, seg: lora.apply_lora(model, p, a, ids, pos, seg, lora_config=lora_cfg)
    )


@functools.lru_cache(maxsize=None)
def _base_forward(model):
    return jax.jit(lambda p, ids, pos, seg: model.apply({"params": p}, ids, pos, seg))


def test_initial_adapters_leave_the_base_model_unchanged():
    cfg = lora.LoraConfig(rank=4, alpha=8.0)
    _, model, params, adapters = _setup(lora_cfg=cfg)
    q, o = adapters["layers_0"]["attn"]["q_proj"], adapters["layers_1"]["attn"]["o_proj"]
    assert q["lora_a"].shape == (64, 4) and q["lora_b"].shape == (4, 4, 16)
    assert o["lora_a"].shape == (4, 16, 4) and o["lora_b"].shape == (4, 64)
    assert sorted(adapters["layers_0"]["mlp"]) == ["down_proj", "gate_proj", "up_proj"]
    assert "embed" not in adapters and "lm_head" not in adapters
    for leaf_path, x in flax.traverse_util.flatten_dict(adapters).items():
        if leaf_path[-1] == "lora_b":
            assert not np.any(np.asarray(x))
        else:  # kaiming-uniform: U(-1/sqrt(in), 1/sqrt(in)), in = 64 (o_proj: 4·16, down: 96)
            bound = 1 / np.sqrt(96 if leaf_path[-2] == "down_proj" else 64)
            assert 0.5 * bound < np.abs(np.asarray(x)).max() <= bound
    ids, pos, seg = BATCH
    base = _base_forward(model)(params, ids, pos, seg)
    np.testing.assert_allclose(_forward(model, cfg)(params, adapters, ids, pos, seg), base, atol=1e-5)


@pytest.mark.parametrize("scan_layers,remat", [(False, False), (True, True)])
def test_merged_equals_unmerged(scan_layers, remat):
    cfg = lora.LoraConfig(rank=4, alpha=8.0, use_rslora=scan_layers)
    config, model, params, adapters = _setup(scan_layers, remat, cfg)
    adapters = perturb(adapters)
    ids, pos, seg = BATCH
    ours = np.asarray(_forward(model, cfg)(params, adapters, ids, pos, seg))
    merged = np.asarray(
        jax.jit(lambda p, a: model.apply({"params": lora.merge_lora(p, a, cfg)}, ids, pos, seg))(
            params, adapters
        )
    )
    base = np.asarray(_base_forward(model)(params, ids, pos, seg))
    assert np.abs(ours - merged).max() <= 1e-4
    assert np.abs(ours - base).max() > 1e-2  # the adapters do something
    # The reference (adapters off) is the base model, through apply_lora and through LoraModel.
    off, off_wrapped = jax.jit(
        lambda p: (
            lora.apply_lora(model, p, None, ids, pos, seg),
            lora.LoraModel(model, cfg).apply({"params": p}, ids, pos, seg),
        )
    )(params)
    np.testing.assert_allclose(np.asarray(off), base, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(off_wrapped), np.asarray(off))


def test_training_changes_only_adapters():
    """A few AdamW steps on next-token NLL (scan + remat): the loss falls, the base stays bitwise equal."""
    cfg = lora.LoraConfig(rank=4, alpha=8.0)
    _, model, params, adapters = _setup(scan_layers=True, remat=True, lora_cfg=cfg)
    base_before = jax.tree.map(np.array, params)
    tx = optax.adamw(1e-2)
    opt_state = tx.init(adapters)
    ids, pos, seg = BATCH
    targets = np.roll(ids, -1, axis=1)

    def nll(a, base):
        logits = lora.apply_lora(model, base, a, ids, pos, seg, lora_config=cfg)  # [B, T, V]
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, targets[:, :-1, None], axis=-1))

    @jax.jit
    def step(a, s, base):
        loss, g = jax.value_and_grad(nll)(a, base)
        updates, s = tx.update(g, s, a)
        return optax.apply_updates(a, updates), s, loss

    start = adapters
    losses = []
    for _ in range(4):
        adapters, opt_state, loss = step(adapters, opt_state, params)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 1e-3, losses
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), base_before)
    changed = jax.tree.map(lambda x, y: bool(np.any(np.asarray(x) != np.asarray(y))), adapters, start)
    assert all(jax.tree.leaves(changed))
    # Optimiser state covers the adapters only: Adam's mu has the adapter tree's structure.
    mu = opt_state[0].mu
    assert jax.tree.structure(mu) == jax.tree.structure(adapters)


def test_sharded_adapters_give_the_same_logits():
    cfg = lora.LoraConfig(rank=4, alpha=8.0)
    config, model, params, adapters = _setup(lora_cfg=cfg)
    adapters = perturb(adapters)
    ids, pos, seg = BATCH
    single = np.asarray(_forward(model, cfg)(params, adapters, ids, pos, seg))

    mesh = make_mesh(fsdp=4, tensor=2)
    axes = param_logical_axes(config)
    p_shard = logical_to_shardings(axes, mesh, shapes=params)
    a_shard = lora.lora_shardings(adapters, axes, mesh)
    q, o = a_shard["layers_0"]["attn"]["q_proj"], a_shard["layers_0"]["attn"]["o_proj"]
    assert q["lora_a"].spec == P("fsdp", None) and q["lora_b"].spec == P(None, "tensor", None)
    assert o["lora_a"].spec == P("tensor", None, None) and o["lora_b"].spec == P(None, "fsdp")
    up = a_shard["layers_1"]["mlp"]["up_proj"]
    assert up["lora_a"].spec == P("fsdp", None) and up["lora_b"].spec == P(None, "tensor")
    sharded_params = jax.device_put(params, p_shard)
    sharded_adapters = jax.device_put(adapters, a_shard)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    fwd = jax.jit(
        lambda p, a, *xs: lora.apply_lora(model, p, a, *xs, lora_config=cfg),
        in_shardings=(p_shard, a_shard, batch, batch, batch),
    )
    out = fwd(sharded_params, sharded_adapters, ids, pos, seg)
    np.testing.assert_allclose(np.asarray(out), single, rtol=1e-5, atol=3e-5)
    # Adapter init can be jitted straight onto the mesh.
    placed = jax.jit(lambda k: lora.init_lora(model, params, cfg, k), out_shardings=a_shard)(
        jax.random.key(1)
    )
    assert placed["layers_0"]["attn"]["q_proj"]["lora_a"].sharding.spec == P("fsdp", None)


def test_target_module_patterns():
    config, model, params, _ = _setup()

    def targets(*patterns, p=params, m=model):
        chosen = lora.select_targets(m, p, lora.LoraConfig(target_modules=patterns))
        return sorted("/".join(k) for k in chosen)

    assert targets("down_proj") == ["layers_0/mlp/down_proj", "layers_1/mlp/down_proj"]
    assert targets("layers_1/*") == [
        f"layers_1/{s}"
        for s in (
            "attn/k_proj",
            "attn/o_proj",
            "attn/q_proj",
            "attn/v_proj",
            "mlp/down_proj",
            "mlp/gate_proj",
            "mlp/up_proj",
        )
    ]
    assert targets("re:layers_0/attn/[qv]_proj") == ["layers_0/attn/q_proj", "layers_0/attn/v_proj"]
    assert targets("*/attn/o_proj/kernel") == ["layers_0/attn/o_proj", "layers_1/attn/o_proj"]
    with pytest.raises(ValueError, match="not Dense projections"):
        targets("q_proj", "lm_head")
    with pytest.raises(ValueError, match="select no projection"):
        targets("c_attn")
    scan_config = config.replace(scan_layers=True)
    scan_params = jax.eval_shape(lambda: init_params(scan_config, jax.random.key(0)))
    scan_model = Transformer(scan_config)
    assert targets("q_proj", p=scan_params, m=scan_model) == ["layers/attn/q_proj"]
    with pytest.raises(ValueError, match="only some layers"):
        targets("layers_0/attn/q_proj", p=scan_params, m=scan_model)


def test_dropout_needs_an_rng_and_changes_the_branch():
    cfg = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.5)
    _, model, params, adapters = _setup(lora_cfg=cfg)
    adapters = perturb(adapters)
    ids, pos, seg = BATCH
    fwd = jax.jit(
        lambda a, key: lora.apply_lora(model, params, a, ids, pos, seg, lora_config=cfg, dropout_rng=key)
    )
    no_drop = np.asarray(_forward(model, cfg)(params, adapters, ids, pos, seg))
    d1, d2 = np.asarray(fwd(adapters, jax.random.key(1))), np.asarray(fwd(adapters, jax.random.key(2)))
    assert np.abs(d1 - no_drop).max() > 1e-3 and np.abs(d1 - d2).max() > 1e-3
    base = np.asarray(_base_forward(model)(params, ids, pos, seg))
    zero_b = jax.tree.map(jnp.zeros_like, adapters)  # with B = 0 dropout cannot change anything
    np.testing.assert_allclose(np.asarray(fwd(zero_b, jax.random.key(1))), base, atol=1e-5)


def test_config_validation_and_scale():
    assert lora.LoraConfig(rank=8, alpha=16).scale == 2.0
    assert lora.LoraConfig(rank=16, alpha=8, use_rslora=True).scale == 2.0
    assert lora.LoraConfig(target_modules="q_proj").target_modules == ("q_proj",)
    for bad in (
        dict(rank=0),
        dict(alpha=0.0),
        dict(dropout=1.0),
        dict(init="orthogonal"),
        dict(target_modules=()),
    ):
        with pytest.raises(ValueError):
            lora.LoraConfig(**bad)
    with pytest.raises(ValueError, match="unknown LoRA option"):
        lora.LoraConfig.from_dict({"rank": 4, "enable": True})
    with pytest.raises(ValueError, match="lora_config"):
        _, model, params, adapters = _setup()
        lora.apply_lora(model, params, adapters, *BATCH)


def test_trainer_objective_with_adapters_and_free_reference():
    """The trainer's DPO glue on a LoraModel via lora_loss_fn: (adapters, base) in place of
    (params, ref_params). At init policy = reference, so the loss is log 2 and only B gets gradient."""
    import ml_collections
    from jaxalign.trainers.step import make_loss_fn

    cfg = lora.LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj", "down_proj"))
    _, model, params, _ = _setup()
    adapters = jax.jit(lambda k: lora.init_lora(model, params, cfg, k))(jax.random.key(1))
    config = ml_collections.ConfigDict(
        dict(
            objective="dpo",
            train=dict(grad_accum_steps=1),
            dpo=dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0),
        )
    )
    loss_fn = lora.lora_loss_fn(make_loss_fn(lora.LoraModel(model, cfg), config))
    ids, pos, seg = BATCH
    half = {
        "input_ids": ids,
        "targets": np.roll(ids, -1, 1),
        "loss_mask": np.ones(ids.shape, np.float32),
        "positions": pos,
        "segment_ids": seg,
    }
    batch = {
        f"{side}_{k}": v[:2] if side == "chosen" else v[2:]
        for side in ("chosen", "rejected")
        for k, v in half.items()
    }
    (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(adapters, params, batch)
    np.testing.assert_allclose(float(loss), np.log(2.0), rtol=1e-6)
    q = grads["layers_0"]["attn"]["q_proj"]
    assert not np.any(np.asarray(q["lora_a"])) and np.any(np.asarray(q["lora_b"]))
    assert jax.tree.structure(grads) == jax.tree.structure(adapters)


def test_scalar_head_trains_its_score_head_in_full():
    """modules_to_save: a scalar-head tree's adapters carry a float32 copy of the score head (the default,
    as PEFT's SEQ_CLS), which gets gradient, replaces the base's in the forward and in merge_lora, and
    is sharded like the base's kernel. Explicit patterns select other modules or none."""
    from jaxalign.models import ScalarHeadModel

    model = ScalarHeadModel(CFG)
    shapes = jax.eval_shape(lambda: init_params(CFG, jax.random.key(0), model))
    rng = np.random.default_rng(4)
    params = jax.tree.map(lambda s: jnp.asarray(0.15 * rng.standard_normal(s.shape), jnp.float32), shapes)
    cfg = lora.LoraConfig(rank=2, alpha=4.0, target_modules=("v_proj",))
    adapters = lora.init_lora(model, params, cfg, jax.random.key(1))
    assert sorted(adapters) == ["score", "transformer"]
    np.testing.assert_array_equal(adapters["score"]["kernel"], params["score"]["kernel"])
    ids, pos, seg = BATCH

    def scores(p, a):  # [B, T]
        return lora.apply_lora(model, p, a, ids, pos, seg, lora_config=cfg)

    grads = jax.jit(jax.grad(lambda a: scores(params, a).sum()))(adapters)
    assert np.abs(np.asarray(grads["score"]["kernel"])).min() > 0
    adapters = perturb(adapters, 0.2, seed=6)
    merged = lora.merge_lora(params, adapters, cfg)
    np.testing.assert_array_equal(merged["score"]["kernel"], adapters["score"]["kernel"])
    adapted, plain = jax.jit(lambda p, a, m: (scores(p, a), scores(m, None)))(params, adapters, merged)
    np.testing.assert_allclose(plain, adapted, atol=1e-5, rtol=0)
    axes = lora.lora_logical_axes(adapters, param_logical_axes(CFG, model))
    assert axes["score"]["kernel"] == ("embed", None)

    norm = lora.init_lora(model, params, cfg.replace(modules_to_save=("final_norm",)), jax.random.key(1))
    assert "score" not in norm and norm["transformer"]["final_norm"]["scale"].shape == (64,)
    assert "score" not in lora.init_lora(model, params, cfg.replace(modules_to_save=()), jax.random.key(1))
    lm_params = jax.eval_shape(lambda: init_params(CFG, jax.random.key(0)))
    assert lora.select_modules_to_save(lm_params, cfg) == []  # a causal LM: none by default
    with pytest.raises(ValueError, match="select no module"):
        lora.init_lora(model, params, cfg.replace(modules_to_save=("lm_head",)), jax.random.key(1))
    with pytest.raises(ValueError, match="both LoRA targets and modules_to_save"):
        lora.init_lora(model, params, cfg.replace(modules_to_save=("v_proj",)), jax.random.key(1))
