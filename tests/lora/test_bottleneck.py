"""Bottleneck adapters (Houlsby): identity at init, the block's forward against numpy, gradients only for
the adapters, scan = unrolled, sharding, save -> load, config validation, and a DPO run from the CLI."""

import functools
import json
import math
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign import lora
from jaxalign.lora import bottleneck as bn
from jaxalign.models import ModelConfig, Transformer, init_params, param_logical_axes, stack_layers
from jaxalign.models.attention import Attention, segment_mask
from jaxalign.models.layers import MLP, RMSNorm, rope_tables
from jaxalign.models.transformer import Block
from jaxalign.sharding import logical_to_shardings, make_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    intermediate_size=48,
    norm_eps=1e-5,
)
GPT2 = ModelConfig.from_hf(
    dict(model_type="gpt2", vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
)
BN = lora.BottleneckConfig(bottleneck_dim=8)


def random_params(config, std=0.15, seed=0):
    """Base parameters drawn with numpy (norm scales 1 + 0.1·N(0, 1), the rest std·N(0, 1))."""
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    flat = {
        k: jnp.asarray(
            (1.0 + 0.1 * rng.standard_normal(s.shape))
            if k[-1] == "scale"
            else std * rng.standard_normal(s.shape),
            jnp.float32,
        )
        for k, s in flax.traverse_util.flatten_dict(shapes).items()
    }
    return flax.traverse_util.unflatten_dict(flat)


def perturb(tree, scale=0.1, seed=1):
    """tree + scale · N(0, 1) (so W_up != 0 and the adapters matter)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape), jnp.float32), tree
    )


def batch(b=2, t=6, vocab=64, seed=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(b, t)).astype(np.int32)
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    return ids, pos, np.ones((b, t), np.int32)


BATCH = batch()


@functools.lru_cache(maxsize=None)
def _setup(config=CFG, cfg=BN):
    model = Transformer(config)
    params = random_params(config)
    adapters = jax.jit(lambda k: lora.init_bottleneck(model, params, cfg, k))(jax.random.key(1))
    return model, params, adapters


@functools.lru_cache(maxsize=None)
def _forward(model):
    return jax.jit(lambda p, a, ids, pos, seg: lora.apply_bottleneck(model, p, a, ids, pos, seg))


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / np.sqrt(2.0)))


def _adapter_np(y, node):
    """numpy: y + gelu(y W_down + b_down) W_up + b_up, y [N, D]."""
    n = {k: np.asarray(v, np.float64) for k, v in node.items()}
    h = _gelu(y @ n[bn.DOWN] + n[bn.DOWN_BIAS])
    return y + h @ n[bn.UP] + n[bn.UP_BIAS]


@pytest.mark.parametrize("config", [CFG, GPT2], ids=["llama", "gpt2"])
def test_identity_at_init_on_the_residual_outputs(config):
    model, params, adapters = _setup(config)
    flat = flax.traverse_util.flatten_dict(adapters)
    assert sorted({k[:-1] for k in flat}) == [
        (f"layers_{i}", sub, proj)
        for i in range(2)
        for sub, proj in (("attn", "o_proj"), ("mlp", "down_proj"))
    ]
    node = adapters["layers_1"]["mlp"]["down_proj"]
    assert node[bn.DOWN].shape == (32, 8) and node[bn.UP].shape == (8, 32)
    assert node[bn.DOWN_BIAS].shape == (8,) and node[bn.UP_BIAS].shape == (32,)
    for k, x in flat.items():
        x = np.asarray(x)
        assert x.dtype == np.float32
        if k[-1] == bn.DOWN:  # N(0, 0.01²): 256 draws
            assert 0.005 < x.std() < 0.015
        else:
            assert not np.any(x)
    # Exactly the base op by op (W_up = b_up = 0: the branch adds exact zeros); jitted, XLA may fuse the
    # two programs differently (float32 rounding only).
    ids, pos, seg = BATCH
    if config is CFG:  # (eager is slow: one family)
        eager = lora.apply_bottleneck(model, params, adapters, ids, pos, seg)
        np.testing.assert_array_equal(
            np.asarray(eager), np.asarray(model.apply({"params": params}, ids, pos, seg))
        )
    base = jax.jit(lambda p: model.apply({"params": p}, ids, pos, seg))(params)
    jitted = _forward(model)(params, adapters, ids, pos, seg)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(base), rtol=1e-6, atol=1e-5)


def test_block_output_against_numpy():
    """Block 0 with perturbed adapters = x + A(attn) then + A(mlp), A(y) = y + up(gelu(down(y))), with the
    sublayers' base outputs from the model's own modules and the adapter arithmetic in numpy."""
    model, params, adapters = _setup()
    layer, node = params["layers_0"], perturb(adapters["layers_0"], scale=0.3)
    ids, pos, seg = BATCH
    x = np.asarray(jnp.take(params["embed"]["embedding"], ids.reshape(-1), axis=0))  # [N, D]
    shared = (
        segment_mask(jnp.asarray(seg), CFG.sliding_window),
        rope_tables(CFG, jnp.asarray(pos)),
        None,
        jnp.asarray(seg),
    )
    adapted = bn.BottleneckModel(Block(CFG), BN).apply(
        {"params": bn.attach_bottleneck(layer, node)}, jnp.asarray(x), shared, None
    )[0]

    def norm(name, h):
        return np.asarray(
            RMSNorm(CFG).apply({"params": layer[name]}, jnp.asarray(h, jnp.float32)), np.float64
        )

    attn = Attention(CFG).apply(
        {"params": layer["attn"]}, jnp.asarray(norm("attn_norm", x), jnp.float32), *shared, None
    )[0]
    h = x + _adapter_np(np.asarray(attn, np.float64), node["attn"]["o_proj"])
    mlp = MLP(CFG).apply({"params": layer["mlp"]}, jnp.asarray(norm("mlp_norm", h), jnp.float32))
    expected = h + _adapter_np(np.asarray(mlp, np.float64), node["mlp"]["down_proj"])
    branch = np.abs(expected - x - np.asarray(attn) - np.asarray(mlp)).max()
    assert branch > 0.05  # the adapters change the block
    np.testing.assert_allclose(np.asarray(adapted), expected, rtol=1e-5, atol=1e-5)


def test_gradients_only_for_adapters_and_the_base_is_the_reference():
    """DPO through the trainer's loss on a BottleneckModel: (adapters, base) in place of (params,
    ref_params). At init policy = reference: loss = log 2; only W_up, b_up get gradient (W_up = 0).
    Then AdamW steps on the adapters lower the loss and leave the base bitwise unchanged."""
    import ml_collections
    from jaxalign.trainers.step import make_loss_fn

    model, params, adapters = _setup()
    config = ml_collections.ConfigDict(
        dict(
            objective="dpo",
            train=dict(grad_accum_steps=1),
            dpo=dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0),
            adapters=dict(kind="bottleneck"),
        )
    )
    loss_fn = make_loss_fn(lora.BottleneckModel(model, BN), config)  # wrapped by bottleneck_loss_fn
    ids, pos, seg = batch(b=4)
    half = dict(
        input_ids=ids,
        targets=np.roll(ids, -1, 1),
        loss_mask=np.ones(ids.shape, np.float32),
        positions=pos,
        segment_ids=seg,
    )
    pairs = {
        f"{s}_{k}": (v[:2] if s == "chosen" else v[2:])
        for s in ("chosen", "rejected")
        for k, v in half.items()
    }
    tx = optax.adamw(1e-2)

    @jax.jit
    def step(a, opt, base):
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(a, base, pairs)
        updates, opt = tx.update(g, opt, a)
        return optax.apply_updates(a, updates), opt, loss, g

    base_before = jax.tree.map(np.array, params)
    a, opt = adapters, tx.init(adapters)
    losses = []
    for i in range(4):
        a, opt, loss, g = step(a, opt, params)
        losses.append(float(loss))
        if i == 0:
            assert jax.tree.structure(g) == jax.tree.structure(adapters)
            o = g["layers_0"]["attn"]["o_proj"]
            assert not np.any(np.asarray(o[bn.DOWN])) and not np.any(np.asarray(o[bn.DOWN_BIAS]))
            assert np.any(np.asarray(o[bn.UP])) and np.any(np.asarray(o[bn.UP_BIAS]))
    np.testing.assert_allclose(losses[0], np.log(2.0), rtol=1e-6)
    assert losses[-1] < losses[0] - 1e-3, losses
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), base_before)
    assert jax.tree.structure(opt[0].mu) == jax.tree.structure(adapters)


def test_scan_layers_with_remat_equals_unrolled():
    model, params, adapters = _setup()
    adapters = perturb(adapters)
    ids, pos, seg = BATCH
    unrolled = np.asarray(_forward(model)(params, adapters, ids, pos, seg))
    scan_model = Transformer(CFG.replace(scan_layers=True, remat=True))
    scan_params, scan_adapters = stack_layers(params, 2), stack_layers(adapters, 2)
    fresh = jax.eval_shape(lambda k: lora.init_bottleneck(scan_model, scan_params, BN, k), jax.random.key(1))
    assert jax.tree.map(lambda x: x.shape, fresh) == jax.tree.map(lambda x: x.shape, scan_adapters)
    assert fresh["layers"]["attn"]["o_proj"][bn.DOWN].shape == (2, 32, 8)
    scanned = np.asarray(_forward(scan_model)(scan_params, scan_adapters, ids, pos, seg))
    base = np.asarray(jax.jit(lambda p: model.apply({"params": p}, ids, pos, seg))(params))
    assert np.abs(unrolled - base).max() > 1e-2
    np.testing.assert_allclose(scanned, unrolled, rtol=1e-5, atol=1e-5)


def test_sharded_adapters_give_the_same_logits():
    model, params, adapters = _setup()
    adapters = perturb(adapters)
    ids, pos, seg = batch(b=8)
    single = np.asarray(_forward(model)(params, adapters, ids, pos, seg))
    mesh = make_mesh(fsdp=4, tensor=2)
    axes = param_logical_axes(CFG)
    p_shard = logical_to_shardings(axes, mesh, shapes=params)
    a_shard = lora.bottleneck_shardings(adapters, axes, mesh)
    o = a_shard["layers_0"]["attn"]["o_proj"]
    assert o[bn.DOWN].spec == P("fsdp", None) and o[bn.UP].spec == P(None, "fsdp")
    assert o[bn.UP_BIAS].spec == P("fsdp") and o[bn.DOWN_BIAS].spec == P(None)
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    fwd = jax.jit(
        lambda p, a, *xs: lora.apply_bottleneck(model, p, a, *xs),
        in_shardings=(p_shard, a_shard, rows, rows, rows),
    )
    out = fwd(jax.device_put(params, p_shard), jax.device_put(adapters, a_shard), ids, pos, seg)
    np.testing.assert_allclose(np.asarray(out), single, rtol=1e-5, atol=3e-5)


def test_save_load_round_trip_across_layouts(tmp_path):
    model, params, adapters = _setup()
    adapters = perturb(adapters)
    scan_cfg = CFG.replace(scan_layers=True)
    stacked_params, stacked = stack_layers(params, 2), stack_layers(adapters, 2)
    path = tmp_path / "bottleneck_adapter"
    lora.save_bottleneck_adapter(path, stacked, BN, scan_cfg)  # saved from the scan layout
    assert sorted(os.listdir(path)) == sorted([bn.CONFIG_FILE, bn.WEIGHTS_FILE])  # no pickle
    meta = json.loads((path / bn.CONFIG_FILE).read_text())
    assert (
        meta["bottleneck_dim"] == 8
        and meta["targets"] == ["o_proj", "down_proj"]
        and meta["activation"] == "gelu"
    )
    for base, cfg, want in ((params, CFG, adapters), (stacked_params, scan_cfg, stacked)):
        got, got_cfg = lora.load_bottleneck_adapter(path, base, cfg)
        assert got_cfg == BN
        assert jax.tree.structure(got) == jax.tree.structure(want)
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), got, want)
    # Placed on a mesh with the adapters' shardings.
    mesh = make_mesh(fsdp=8)
    got, _ = lora.load_bottleneck_adapter(path, params, CFG, mesh=mesh)
    assert got["layers_0"]["mlp"]["down_proj"][bn.DOWN].sharding.spec == P("fsdp", None)
    # A file from another model shape is refused.
    other = CFG.replace(hidden_size=16, head_dim=4)
    with pytest.raises(ValueError, match="has shape"):
        lora.load_bottleneck_adapter(path, random_params(other), other)
    with pytest.raises(FileNotFoundError):
        lora.load_bottleneck_adapter(tmp_path, params, CFG)


def test_config_and_targets():
    with pytest.raises(ValueError, match="bottleneck_dim=0"):
        lora.BottleneckConfig(bottleneck_dim=0)
    with pytest.raises(ValueError, match="unknown bottleneck adapter option"):
        lora.BottleneckConfig.from_dict({"dim": 4})
    model, params, _ = _setup()
    only_mlp = lora.BottleneckConfig(bottleneck_dim=4, targets=("layers_1/mlp/*",))
    tree = lora.init_bottleneck(model, params, only_mlp, jax.random.key(0))
    assert list(tree) == ["layers_1"] and list(tree["layers_1"]["mlp"]) == [
        "down_proj",
        "gate_proj",
        "up_proj",
    ]
    assert tree["layers_1"]["mlp"]["up_proj"][bn.UP].shape == (4, 48)  # out dims of up_proj: [F]
    with pytest.raises(ValueError, match="bottleneck adapter targets"):
        lora.init_bottleneck(model, params, lora.BottleneckConfig(targets=("lm_head",)), jax.random.key(0))


def _bad(mutate, match, name="dpo"):
    import importlib

    from jaxalign.trainers import rl
    from jaxalign.trainers.validate import ConfigError, validate

    c = importlib.import_module(f"configs.{name}").get_config()
    with c.unlocked():
        mutate(c)
    with pytest.raises(ConfigError, match=match):
        (rl.validate if name in ("ppo", "grpo") else validate)(c, num_devices=8)


def test_validation_names_the_field():
    _bad(lambda c: setattr(c.adapters, "kind", "qlora"), r"config\.adapters\.kind='qlora': expected lora")
    _bad(
        lambda c: (setattr(c.adapters, "kind", "bottleneck"), setattr(c.adapters, "bottleneck_dim", 0)),
        r"config\.adapters\.bottleneck_dim=0: must be an integer >= 1",
    )

    def both(c):
        c.adapters.kind, c.lora.enabled = "bottleneck", True

    _bad(both, r"config\.adapters\.kind='bottleneck': bottleneck adapters and LoRA are exclusive")
    _bad(
        lambda c: (setattr(c.adapters, "kind", "bottleneck"), setattr(c.adapters, "targets", ("oproj",))),
        r"config\.adapters\.targets=.*unknown module 'oproj'",
    )
    _bad(
        lambda c: setattr(c.adapters, "kind", "bottleneck"),
        r"config\.adapters\.kind=.*reward models",
        "reward",
    )


@pytest.mark.slow
def test_dpo_cli_run_with_bottleneck_adapters(tmp_path):
    """3 DPO steps from the embedded SFT checkpoint: step 1's loss is log 2 (reference = base with adapters
    off, margins 0; rpo_alpha=0 for plain DPO), losses finite, base exported unchanged + the adapter file."""
    from safetensors.numpy import load_file

    wd = tmp_path / "run"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [
        sys.executable,
        "-m",
        "jaxalign.main",
        f"--config={os.path.join(ROOT, 'configs', 'dpo.py')}",
        f"--workdir={wd}",
    ]
    cmd += [
        "--config.adapters.kind=bottleneck",
        "--config.adapters.bottleneck_dim=16",
        "--config.train.num_steps=3",
        "--config.train.batch_size=8",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        "--config.data.eval=",
        "--config.dpo.rpo_alpha=0.0",
        "--config.dpo.ref_cache_dir=",
        "--config.optimizer.warmup_steps=0",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(wd / "metrics.jsonl") as f:
        train = [m for m in map(json.loads, f) if "train/loss" in m]
    losses = [m["train/loss"] for m in train]
    assert [m["step"] for m in train] == [1, 2, 3] and all(np.isfinite(losses)), losses
    np.testing.assert_allclose(losses[0], np.log(2.0), atol=1e-4)
    assert "cannot be merged" in r.stdout
    exported = load_file(str(wd / "hf" / "model.safetensors"))
    source = load_file(
        os.path.join(ROOT, "jaxalign", "assets", "embedded", "checkpoints", "sft", "model.safetensors")
    )
    assert exported.keys() == source.keys()
    for k in source:
        np.testing.assert_array_equal(exported[k], source[k])
    adapter = load_file(str(wd / "hf" / "bottleneck_adapter" / bn.WEIGHTS_FILE))
    ups = [v for k, v in adapter.items() if k.endswith("/" + bn.UP)]
    assert ups and ups[0].shape[0] == 16 and any(np.any(u) for u in ups)  # trained away from zero
