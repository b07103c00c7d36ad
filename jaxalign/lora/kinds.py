"""The adapter kinds a run trains on a frozen base, behind one interface: LoRA or bottleneck adapters.

    kind = kinds.kind_of(config)                 # "lora" (lora.enabled), "bottleneck" (adapters.kind) or None
    adapters, cfg, model = kinds.make(config, model, params, mesh, rng)   # trainable tree on the mesh
    tree = kinds.attach(cfg, base, adapters)     # what `model.apply` runs: base + adapters
    loss_fn = kinds.wrap_loss(kind, loss_fn)     # (adapters, base, batch) -> loss_fn(attach(...), base, batch)

Either way the frozen base with the adapters off is the reference policy, so no second copy exists.
"""

from __future__ import annotations

import jax

from jaxalign import models
from jaxalign.lora import adapters as lora_adapters
from jaxalign.lora import bottleneck
from jaxalign.lora.config import LoraConfig


def kind_of(config):
    """ "lora" (`lora.enabled`), "bottleneck" (`adapters.kind=bottleneck`), or None: full fine-tuning."""
    if bottleneck.enabled(config):
        return "bottleneck"
    return "lora" if "lora" in config and config.lora.enabled else None


def config_of(config):
    """The adapters' config (LoraConfig or BottleneckConfig) from a run config, or None."""
    kind = kind_of(config)
    if kind == "bottleneck":
        return bottleneck.from_run_config(config)
    if kind == "lora":
        d = {k: v for k, v in config.lora.to_dict().items() if k != "enabled"}
        d["target_modules"] = tuple(d["target_modules"])
        return LoraConfig.from_dict(d)
    return None


def _is_bottleneck(adapter):
    """`adapter`: an adapter config, or a kind name from `kind_of`."""
    return adapter == "bottleneck" or isinstance(adapter, bottleneck.BottleneckConfig)


def _parts(cfg):
    """(init, shardings, stand-in model class) of the adapters of config `cfg`."""
    if _is_bottleneck(cfg):
        return bottleneck.init_bottleneck, bottleneck.bottleneck_shardings, bottleneck.BottleneckModel
    return lora_adapters.init_lora, lora_adapters.lora_shardings, lora_adapters.LoraModel


def make(config, model, params, mesh, rng):
    """Adapters for `model` (a Transformer or ScalarHeadModel) on the frozen `params`, initialised from
    `rng` and sharded like the kernels they sit on. Returns (adapter tree, adapter config, the stand-in
    model that runs base + adapters)."""
    cfg = config_of(config)
    init, shardings, stand_in = _parts(cfg)
    base_axes = models.param_logical_axes(model.config, model)
    shapes = jax.eval_shape(lambda k: init(model, params, cfg, k), rng)
    tree = jax.jit(lambda k: init(model, params, cfg, k), out_shardings=shardings(shapes, base_axes, mesh))(
        rng
    )
    return tree, cfg, stand_in(model, cfg)


def abstract(config, model, params, mesh):
    """`make` without computing anything (`params` may be abstract): (adapter ShapeDtypeStructs with
    their shardings, adapter config, stand-in model). For `jaxalign.plan`."""
    cfg = config_of(config)
    init, shardings, stand_in = _parts(cfg)
    base_axes = models.param_logical_axes(model.config, model)
    shapes = jax.eval_shape(lambda k: init(model, params, cfg, k), jax.random.key(0))
    tree = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        shapes,
        shardings(shapes, base_axes, mesh),
    )
    return tree, cfg, stand_in(model, cfg)


def attach(adapter_config, base, adapters):
    """The tree the stand-in model applies: the frozen base with the adapters next to their kernels."""
    fn = bottleneck.attach_bottleneck if _is_bottleneck(adapter_config) else lora_adapters.attach_lora
    return fn(base, adapters)


def wrap_loss(adapter, loss_fn):
    """`loss_fn(params, frozen, batch)` of a model with adapters -> `f(adapters, base, batch)`: the
    adapters are what is trained, the base is the frozen argument (and the reference). `adapter`: the
    adapters' config or their kind."""
    fn = bottleneck.bottleneck_loss_fn if _is_bottleneck(adapter) else lora_adapters.lora_loss_fn
    return fn(loss_fn)
