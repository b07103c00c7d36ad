"""Mesh construction, the logical-axis rules table, and sharded forwards/grads = single device
(8 fake CPU devices: fsdp 4 x tensor 2, data 2 x fsdp 4), with parameters loaded from an HF directory
straight onto the mesh."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign.checkpoints import load_hf_model, save_hf_model
from jaxalign.models import ModelConfig, Transformer, init_params, param_logical_axes
from jaxalign.sharding import batch_sharding, logical_to_shardings, logical_to_spec, make_mesh

CFG = ModelConfig(
    vocab_size=128,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=96,
    initializer_range=0.1,
    model_type="qwen3",
    qk_norm=True,
)


def test_make_mesh_sizes_and_errors():
    mesh = make_mesh(data=2, fsdp=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    with pytest.raises(ValueError, match="tensor=3"):
        make_mesh(fsdp=2, tensor=3)
    with pytest.raises(ValueError, match="only one"):
        make_mesh(data=-1, fsdp=-1)


def test_rules_map_logical_names_to_mesh_axes():
    mesh = make_mesh(fsdp=4, tensor=2)
    assert logical_to_spec(("embed", "heads", "head_dim"), mesh) == P("fsdp", "tensor", None)
    assert logical_to_spec(("layers", "mlp", "embed"), mesh) == P(None, "tensor", "fsdp")
    assert logical_to_spec(("vocab", "embed"), mesh) == P("tensor", "fsdp")
    # kv_heads=1 can't be split over tensor=2: replicated when the shape is known.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), mesh, shape=(64, 1, 16)) == P(
        "fsdp", None, None
    )
    assert batch_sharding(make_mesh(data=2, fsdp=4)).spec == P(("data", "fsdp"))
    # Size-1 mesh axes drop out: a pure-tensor mesh leaves "embed" replicated.
    assert logical_to_spec(("embed", "mlp"), make_mesh(fsdp=1, tensor=8)) == P(None, "tensor")


@functools.lru_cache(maxsize=None)
def _hf_dir(tmp_root):
    params = init_params(CFG, jax.random.key(1))
    save_hf_model(tmp_root, CFG, params)
    return tmp_root


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, CFG.vocab_size, size=(8, 8)).astype(np.int32)
    pos = np.tile(np.arange(8, dtype=np.int32), (8, 1))
    seg = np.ones((8, 8), np.int32)
    seg[1, :3] = 0  # a left-padded row
    pos[1] = np.maximum(np.arange(8) - 3, 0)
    return ids, pos, seg


def _loss_and_grad(config, params, ids, pos, seg):
    def loss(p):
        logits = Transformer(config).apply({"params": p}, ids, pos, seg)
        return jnp.mean(jax.nn.logsumexp(logits, -1) * (seg != 0)), logits

    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return logits, value, grads


@pytest.mark.parametrize("mesh_shape,scan", [(dict(fsdp=4, tensor=2), False), (dict(data=2, fsdp=4), True)])
def test_sharded_forward_and_grads_equal_single_device(tmp_path_factory, mesh_shape, scan):
    path = _hf_dir(str(tmp_path_factory.getbasetemp() / "sharding_model"))
    ids, pos, seg = _batch()
    config, single = load_hf_model(path, scan_layers=scan)
    ref_logits, ref_loss, ref_grads = jax.jit(functools.partial(_loss_and_grad, config))(
        single, ids, pos, seg
    )

    mesh = make_mesh(**mesh_shape)
    config, params = load_hf_model(path, mesh=mesh, scan_layers=scan)
    shardings = logical_to_shardings(param_logical_axes(config), mesh, shapes=params)
    jax.tree.map(
        lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(f"{x.sharding} != {s}"),
        params,
        shardings,
    )
    q_kernel = (
        params["layers"]["attn"]["q_proj"]["kernel"]
        if scan
        else params["layers_0"]["attn"]["q_proj"]["kernel"]
    )
    assert len(q_kernel.addressable_shards[0].data.flatten()) < q_kernel.size  # really sharded

    data = batch_sharding(mesh)
    step = jax.jit(
        functools.partial(_loss_and_grad, config),
        in_shardings=(shardings, data, data, data),
        out_shardings=(data, None, shardings),
    )
    logits, loss, grads = step(params, *(jax.device_put(x, data) for x in (ids, pos, seg)))
    assert isinstance(logits.sharding, NamedSharding)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=3e-5)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), grads, ref_grads
    )
