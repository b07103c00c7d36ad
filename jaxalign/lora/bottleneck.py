"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP") on a frozen
base: init, logical axes, the adapted forward, save / load of their own file.

    cfg = BottleneckConfig(bottleneck_dim=64)                                  # o_proj + down_proj
    adapters = init_bottleneck(model, base_params, cfg, rng)                   # adapters only
    logits = apply_bottleneck(model, base_params, adapters, ids, pos, seg)     # base + adapters
    logits = apply_bottleneck(model, base_params, None, ids, pos, seg)         # base = reference
    save_bottleneck_adapter("out/bottleneck_adapter", adapters, cfg, model_config)
    adapters, cfg = load_bottleneck_adapter("out/bottleneck_adapter", base_params, model_config)

Each adapted projection's output y [N, *out] (flattened to [N, d], d = prod(out); d = D for the default
targets, the attention output projection o_proj and the MLP output projection down_proj of every model
family, GPT-2's c_proj's included) becomes, before the block's residual add,

    y <- y + f(y W_down + b_down) W_up + b_up,      W_down [d, m], b_down [m], W_up [m, d], b_up [d]

with f = GELU (exact, erf form) and m = `bottleneck_dim`. W_up = 0 and b_up = 0 at init (W_down ~
N(0, init_std²), b_down = 0), so the adapted model starts exactly equal to the base. The branch is
nonlinear: unlike LoRA it cannot be merged into the base weights, so the adapters are exported as their
own file (`save_bottleneck_adapter`: safetensors + a small JSON config, never pickle).

Adapter tree: the base tree's module paths, holding only the adapted projections, each with
    adapter_down [*out, m]   adapter_down_bias [m]   adapter_up [m, *out]   adapter_up_bias [*out]
e.g. {"layers_0": {"attn": {"o_proj": {"adapter_down": [D, m], ...}}, "mlp": {"down_proj": {...}}}}.
With `scan_layers` every leaf carries the kernels' leading [L] axis ({"layers": {"attn": {"o_proj":
{"adapter_down": [L, D, m], ...}}}}), so nn.scan slices them per layer. float32 whatever param_dtype.

The mechanism is LoRA's (jaxalign.lora.adapters): `attach_bottleneck` puts the four leaves next to the
adapted kernel in the "params" tree (a dict union, no copies) and a `flax.linen.intercept_methods`
interceptor adds the branch to the output of every `jaxalign.models.layers.Dense` call whose scope holds
an adapter_down. The plain base tree runs unchanged (the DPO reference for free); jit, grad, nn.remat
and nn.scan compose; gradients are taken w.r.t. the adapter tree only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxalign.lora.adapters import _get, _set, as_module, select_targets
from jaxalign.lora.config import LoraConfig
from jaxalign.lora.peft_format import _host
from jaxalign.models.config import ModelConfig
from jaxalign.models.layers import Dense
from jaxalign.models.transformer import param_logical_axes
from jaxalign.sharding import LOGICAL_AXIS_RULES, logical_to_shardings

DOWN, DOWN_BIAS, UP, UP_BIAS = "adapter_down", "adapter_down_bias", "adapter_up", "adapter_up_bias"
LEAVES = (DOWN, DOWN_BIAS, UP, UP_BIAS)
CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "bottleneck_adapter.safetensors"
FORMAT = "jaxalign-bottleneck-adapter"
FORMAT_VERSION = 1
# The projections whose outputs feed the residual adds: attention output and MLP output (every family).
RESIDUAL_OUTPUTS = ("o_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class BottleneckConfig:
    """Bottleneck adapter hyper-parameters (hashable: safe to close over in jitted code).

    bottleneck_dim: m >= 1, the inner size of W_down [d, m] and W_up [m, d].
    targets: patterns selecting the projections whose outputs are adapted, with LoRA's syntax
      (jaxalign.lora.config: bare names, path globs, "re:<regex>"). Default: o_proj and down_proj, the
      two residual-branch outputs of every block (Houlsby placement).
    init_std: standard deviation of W_down's normal init (W_up, b_up, b_down start at zero).
    """

    bottleneck_dim: int = 64
    targets: tuple[str, ...] = RESIDUAL_OUTPUTS
    init_std: float = 1e-2
    kind = "bottleneck"  # class attribute: tells it from a LoraConfig (e.g. in `Run.lora_config`)

    def __post_init__(self):
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        object.__setattr__(self, "targets", targets)
        if int(self.bottleneck_dim) != self.bottleneck_dim or self.bottleneck_dim < 1:
            raise ValueError(f"bottleneck_dim={self.bottleneck_dim!r} must be an integer >= 1")
        if not targets:
            raise ValueError("bottleneck targets is empty: name at least one projection")
        if not (self.init_std > 0 and math.isfinite(self.init_std)):
            raise ValueError(f"init_std={self.init_std!r} must be a finite number > 0")
        LoraConfig(target_modules=targets)  # the same pattern checks (malformed regexes fail here)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BottleneckConfig:
        """From a plain dict (e.g. `config.adapters.to_dict()` minus "kind"); unknown keys raise."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown bottleneck adapter option(s) {unknown}; known: {sorted(fields)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d


def enabled(config) -> bool:
    """Whether a run config (ml_collections) asks for bottleneck adapters (`adapters.kind=bottleneck`)."""
    return "adapters" in config and config.adapters.kind == "bottleneck"


def from_run_config(config) -> BottleneckConfig:
    """The BottleneckConfig of a run config's `adapters` block."""
    a = config.adapters
    return BottleneckConfig(
        bottleneck_dim=int(a.bottleneck_dim), targets=tuple(a.targets), init_std=float(a.init_std)
    )


# --------------------------------------------------------------------------------------- the tree
def _select(model, base_params, cfg: BottleneckConfig):
    try:
        return sorted(select_targets(model, base_params, LoraConfig(target_modules=cfg.targets)).items())
    except ValueError as e:
        raise ValueError(f"bottleneck adapter targets: {e}") from None


def adapter_paths(params: Mapping) -> list[tuple[str, ...]]:
    """Module paths holding a bottleneck adapter (parents of adapter_down leaves)."""
    flat = flax.traverse_util.flatten_dict(dict(params))
    return [p[:-1] for p in flat if p[-1] == DOWN]


def init_bottleneck(
    model: nn.Module | ModelConfig, base_params: Mapping, cfg: BottleneckConfig, rng: jax.Array
) -> dict:
    """Fresh adapters for the selected projections: W_down ~ N(0, init_std²), b_down = W_up = b_up = 0
    (the adapted model starts equal to the base). Jittable (e.g. with `out_shardings=
    bottleneck_shardings(...)`). All W_down come from one random draw, split in path order.

    Args:
      model: Transformer / ScalarHeadModel (or their ModelConfig) that `base_params` belongs to.
      base_params: the frozen base tree (arrays or ShapeDtypeStructs).
      cfg: bottleneck size, targets, init scale.
      rng: PRNG key.
    Returns:
      {module path...: {adapter_down [(L,) *out, m], adapter_down_bias [(L,) m],
                        adapter_up [(L,) m, *out], adapter_up_bias [(L,) *out]}} float32.
    """
    m = cfg.bottleneck_dim
    sites = _select(model, base_params, cfg)
    leads = [site.kernel_shape[:1] if site.stacked else () for _, site in sites]
    down_shapes = [lead + site.out_shape + (m,) for lead, (_, site) in zip(leads, sites)]
    draw = jax.random.normal(rng, (sum(math.prod(s) for s in down_shapes),), jnp.float32)
    out: dict = {}
    offset = 0
    for (path, site), lead, shape in zip(sites, leads, down_shapes):
        n = math.prod(shape)
        node = {
            DOWN: cfg.init_std * draw[offset : offset + n].reshape(shape),
            DOWN_BIAS: jnp.zeros(lead + (m,), jnp.float32),
            UP: jnp.zeros(lead + (m,) + site.out_shape, jnp.float32),
            UP_BIAS: jnp.zeros(lead + site.out_shape, jnp.float32),
        }
        offset += n
        _set(out, path, node)
    return out


def bottleneck_logical_axes(params: Mapping, base_logical_axes: Mapping) -> dict:
    """Logical axis names for the adapters, borrowed from their kernels' output dims (and [L]); the
    bottleneck axis m is replicated (None).

    Args:
      params: adapter tree (arrays or ShapeDtypeStructs).
      base_logical_axes: `jaxalign.models.param_logical_axes(config, module)` of the base.
    """
    out: dict = {}
    for path in adapter_paths(params):
        k_axes = tuple(_get(base_logical_axes, path + ("kernel",)))
        node = _get(params, path)
        lead = len(node[DOWN_BIAS].shape) - 1  # 1 for stacked ([L]) adapters, else 0
        n_out = len(node[UP_BIAS].shape) - lead
        lead_axes, out_axes = k_axes[:lead], k_axes[len(k_axes) - n_out :]
        _set(
            out,
            path,
            {
                DOWN: lead_axes + out_axes + (None,),
                DOWN_BIAS: lead_axes + (None,),
                UP: lead_axes + (None,) + out_axes,
                UP_BIAS: lead_axes + out_axes,
            },
        )
    return out


def bottleneck_shardings(
    params: Mapping, base_logical_axes: Mapping, mesh: Mesh, rules=LOGICAL_AXIS_RULES
) -> dict:
    """NamedShardings for the adapters on `mesh` (dims the mesh doesn't divide stay replicated)."""
    return logical_to_shardings(
        bottleneck_logical_axes(params, base_logical_axes), mesh, rules, shapes=params
    )


def attach_bottleneck(base_params: Mapping, params: Mapping | None) -> dict:
    """The base tree with the adapter leaves added next to each adapted kernel (a dict union: no copies)."""
    if params is None:
        return base_params
    out = dict(base_params)
    for k, v in params.items():
        if k in LEAVES:
            out[k] = v
        elif k not in base_params:
            raise ValueError(
                f"adapter path component {k!r} is not in the base parameters (have {sorted(base_params)})"
            )
        else:
            out[k] = attach_bottleneck(base_params[k], v)
    return out


# ------------------------------------------------------------------------------------- the forward
def bottleneck_branch(y: jax.Array, down, down_bias, up, up_bias, dtype) -> jax.Array:
    """y + gelu(y W_down + b_down) W_up + b_up on y [N, *out] (weights as in the tree, one layer)."""
    m = down.shape[-1]
    y2 = y.reshape((-1, math.prod(down.shape[:-1]))).astype(dtype)  # [N, d]
    h = jnp.dot(y2, down.reshape((-1, m)).astype(dtype)) + down_bias.astype(dtype)  # [N, m]
    h = jax.nn.gelu(h, approximate=False)
    delta = jnp.dot(h, up.reshape((m, -1)).astype(dtype)) + up_bias.reshape(-1).astype(dtype)  # [N, d]
    return y + delta.reshape(y.shape).astype(y.dtype)


def _intercept(next_fun, args, kwargs, context):
    """Adds the bottleneck branch to the output of each Dense call whose scope has adapters."""
    y = next_fun(*args, **kwargs)
    mod = context.module
    if (
        context.method_name != "__call__"
        or not isinstance(mod, Dense)
        or not mod.has_variable("params", DOWN)
    ):
        return y
    leaves = [mod.get_variable("params", name) for name in LEAVES]
    return bottleneck_branch(y, *leaves, jnp.dtype(mod.config.dtype))


class BottleneckModel:
    """A stand-in for a linen model in code that calls `model.apply({"params": p}, ...)`.

    `p` is either `attach_bottleneck(base, adapters)` (the adapted policy) or the plain base tree
    (adapters off: the reference), so a loss written against `model.apply` needs no change.
    """

    def __init__(self, model: nn.Module, bottleneck_config: BottleneckConfig):
        self.model = model
        self.bottleneck_config = bottleneck_config

    @property
    def config(self):
        return self.model.config

    def apply(self, variables, *args, **kwargs):
        with nn.intercept_methods(_intercept):
            return self.model.apply(variables, *args, **kwargs)


def apply_bottleneck(model: nn.Module, base_params: Mapping, params: Mapping | None, *args, **kwargs):
    """`model.apply` with bottleneck adapters on the adapted projections' outputs.

    Args:
      model: Transformer or ScalarHeadModel.
      base_params: frozen base tree.
      params: adapter tree, or None for the base model itself (the DPO reference).
      *args, **kwargs: the model's inputs (input_ids, positions, segment_ids, cache=..., ...).
    Returns:
      whatever `model.apply` returns (logits [B, T, V] float32, ...).
    """
    if params is None:
        return model.apply({"params": base_params}, *args, **kwargs)
    with nn.intercept_methods(_intercept):
        return model.apply({"params": attach_bottleneck(base_params, params)}, *args, **kwargs)


def bottleneck_loss_fn(loss_fn):
    """As `lora.lora_loss_fn`: `f(adapters, base_params, batch) = loss_fn(attach_bottleneck(base,
    adapters), base, batch)` for an objective's `loss_fn(params, ref_params, batch)` built on a
    `BottleneckModel`. The base with adapters off is the reference policy: differentiate w.r.t. the
    first argument only, and no base weight gradient or optimiser state exists."""

    def wrapped(params, base_params, batch):
        return loss_fn(attach_bottleneck(base_params, params), base_params, batch)

    return wrapped


# --------------------------------------------------------------------------------- save and load
def _per_layer_names(path: tuple[str, ...], n_layers: int) -> list[tuple[str, int | None]]:
    """A module path -> [(per-layer path string, index into the stacked [L] axis or None)]."""
    if "layers" in path:  # stacked (scan_layers): one entry per layer
        i = path.index("layers")
        return [("/".join(path[:i] + (f"layers_{j}",) + path[i + 1 :]), j) for j in range(n_layers)]
    return [("/".join(path), None)]


def save_bottleneck_adapter(
    path: str | os.PathLike,
    params: Mapping,
    cfg: BottleneckConfig,
    model_config: ModelConfig | None = None,
) -> None:
    """Writes `<path>/bottleneck_adapter.safetensors` + `<path>/bottleneck_config.json`.

    Tensors are float32 and named by per-layer module path and leaf, whatever the layout they were
    trained in ("layers_0/attn/o_proj/adapter_down" [*out, m], ...; a scan_layers tree is split into
    its layers), so a file loads into either layout. The JSON holds the format name and version, the
    config (bottleneck_dim, targets, init_std), the activation ("gelu", erf form) and, with
    `model_config`, the base's model_type / num_layers / hidden_size. All processes call this
    (multi-host gathers); process 0 writes.
    """
    tensors: dict[str, np.ndarray] = {}
    for mod_path in adapter_paths(params):
        node = {k: _host(v) for k, v in _get(params, mod_path).items()}
        for name, sel in _per_layer_names(mod_path, node[DOWN].shape[0]):
            for leaf, x in node.items():
                tensors[f"{name}/{leaf}"] = np.ascontiguousarray(x if sel is None else x[sel], np.float32)
    if jax.process_index() != 0:
        return
    config: dict[str, Any] = dict(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        activation="gelu",
        **cfg.to_dict(),
    )
    if model_config is not None:
        config.update(
            model_type=model_config.model_type,
            num_layers=model_config.num_layers,
            hidden_size=model_config.hidden_size,
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "np"})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def load_bottleneck_adapter(
    path: str | os.PathLike,
    base_params: Mapping,
    model_config: ModelConfig,
    mesh: Mesh | None = None,
    rules=LOGICAL_AXIS_RULES,
) -> tuple[dict, BottleneckConfig]:
    """Reads a `save_bottleneck_adapter` directory into (adapter tree in `base_params`' layout, config).

    Every tensor must belong to a projection of this model with the right shape; with scan_layers all
    layers of an adapted projection must be present. With `mesh`, adapters are placed with
    `bottleneck_shardings`; otherwise on the default device.
    """
    path = Path(path)
    file = path / CONFIG_FILE
    if not file.exists():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path}")
    meta = json.loads(file.read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{file}: format {meta.get('format')!r} v{meta.get('format_version')!r}; "
            f"expected {FORMAT!r} v{FORMAT_VERSION}"
        )
    if meta.get("activation") != "gelu":
        raise ValueError(f"{file}: activation {meta.get('activation')!r}; only 'gelu' is supported")
    cfg = BottleneckConfig.from_dict(
        {k: meta[k] for k in ("bottleneck_dim", "targets", "init_std") if k in meta}
    )
    if meta.get("model_type", model_config.model_type) != model_config.model_type:
        raise ValueError(
            f"{file}: adapter for model_type {meta['model_type']!r}, not {model_config.model_type!r}"
        )
    if not (path / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {path}")

    m = cfg.bottleneck_dim
    sites = dict(_select(model_config, base_params, cfg))
    by_name: dict[str, tuple[tuple[str, ...], int | None]] = {}  # per-layer path -> (site path, index)
    for site_path, site in sites.items():
        n = site.kernel_shape[0] if site.stacked else 1
        for name, sel in _per_layer_names(site_path, n):
            by_name[name] = (site_path, sel)
    found: dict[tuple[str, ...], dict[int | None, dict[str, np.ndarray]]] = {}
    with safe_open(path / WEIGHTS_FILE, framework="numpy") as f:
        for key in f.keys():
            name, _, leaf = key.rpartition("/")
            if leaf not in LEAVES or name not in by_name:
                raise ValueError(
                    f"{path}: tensor {key!r} is not an adapter of a selected projection of this model"
                )
            site_path, sel = by_name[name]
            out_shape = sites[site_path].out_shape
            want = {DOWN: out_shape + (m,), DOWN_BIAS: (m,), UP: (m,) + out_shape, UP_BIAS: out_shape}[leaf]
            x = f.get_tensor(key)
            if tuple(x.shape) != want:
                raise ValueError(f"{path}: {key} has shape {tuple(x.shape)}, expected {want}")
            found.setdefault(site_path, {}).setdefault(sel, {})[leaf] = x.astype(np.float32)
    if not found:
        raise ValueError(f"{path}: no adapter tensors")

    tree: dict = {}
    for site_path, layers in found.items():
        site = sites[site_path]
        for sel, node in layers.items():
            if set(node) != set(LEAVES):
                raise ValueError(f"{path}: {'/'.join(site_path)} has {sorted(node)}, needs {list(LEAVES)}")
        if site.stacked:
            n = site.kernel_shape[0]
            if sorted(layers) != list(range(n)):
                raise ValueError(
                    f"{path}: {'/'.join(site_path)} adapters exist for layers {sorted(layers)} only; "
                    f"a scan_layers model needs all {n} (load with scan_layers=False)"
                )
            node = {leaf: np.stack([layers[i][leaf] for i in range(n)]) for leaf in LEAVES}
        else:
            node = layers[None]
        _set(tree, site_path, node)
    if mesh is not None:
        axes = param_logical_axes(model_config, as_module(model_config, base_params))
        shardings = bottleneck_shardings(tree, axes, mesh, rules)
        tree = jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)
    else:
        tree = jax.tree.map(jnp.asarray, tree)
    return tree, cfg
