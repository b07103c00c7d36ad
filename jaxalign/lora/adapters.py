"""Low-rank adapters on a frozen base: init, logical axes, the adapted forward, merge for export.

    lora = init_lora(model, base_params, LoraConfig(rank=8, alpha=16), rng)     # adapters only
    logits = apply_lora(model, base_params, lora, ids, pos, seg, lora_config=cfg)  # base + adapters
    logits = apply_lora(model, base_params, None, ids, pos, seg)                  # base = reference
    merged = merge_lora(base_params, lora, cfg)                                   # for HF export

Adapter tree: the base tree's module paths, holding only the adapted modules, each with
    lora_a [*in, r]      (the kernel's input dims, then the rank)
    lora_b [r, *out]     (the rank, then the kernel's output dims)
e.g. {"layers_0": {"attn": {"q_proj": {"lora_a": [D, r], "lora_b": [r, H, Dh]}, "o_proj":
{"lora_a": [H, Dh, r], "lora_b": [r, D]}, ...}}}. With `scan_layers` both carry the kernel's leading
[L] axis ({"layers": {"attn": {"q_proj": {"lora_a": [L, D, r], ...}}}}), so nn.scan slices them with
the kernels. Adapters are float32 (trainable master weights) whatever the base's param_dtype.
Modules trained in full (`LoraConfig.modules_to_save`, by default a scalar-head model's score head) sit
in the same tree as float32 copies of their parameters: {"score": {"kernel": [D, 1]}}.

The forward never builds W + scale·A·B: `attach_lora` puts lora_a/lora_b next to each adapted kernel
in the "params" tree (a dict union, no array copies) and a `flax.linen.intercept_methods` interceptor
adds scale · (x A) B to the output of every `jaxalign.models.layers.Dense` call whose scope holds a
lora_a (the saved modules' copies simply replace the base's leaves). Modules without adapters (and a
plain base tree: the reference) run unchanged. Because the
adapters are ordinary variables of the module's scope, this composes with jit, grad, nn.remat and
nn.scan (stacked adapters are sliced per layer). Gradients are taken w.r.t. the adapter tree only, so
no weight gradient of a base kernel is ever computed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign.lora.config import LoraConfig, matches
from jaxalign.models.config import ModelConfig
from jaxalign.models.heads import ScalarHeadModel
from jaxalign.models.layers import Dense
from jaxalign.models.transformer import Transformer
from jaxalign.sharding import LOGICAL_AXIS_RULES, logical_to_shardings

LORA_A, LORA_B = "lora_a", "lora_b"
Path = tuple[str, ...]


# ----------------------------------------------------------------------------------- target sites
@dataclasses.dataclass(frozen=True)
class DenseSite:
    """One projection the adapters can attach to."""

    path: Path  # module path, e.g. ("layers_0", "attn", "q_proj")
    in_dims: int  # number of leading kernel dims that are inputs (o_proj: 2)
    kernel_shape: tuple[int, ...]  # including the [L] axis when stacked
    stacked: bool  # scan layout: kernel (and adapters) lead with [L]

    @property
    def in_shape(self) -> tuple[int, ...]:
        lead = int(self.stacked)
        return self.kernel_shape[lead : lead + self.in_dims]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.kernel_shape[int(self.stacked) + self.in_dims :]

    def layer_names(self) -> list[str]:
        """Per-layer path strings ("layers_3/attn/q_proj"); one entry when not stacked."""
        return _layer_names(self.path, self.kernel_shape[0] if self.stacked else None)


def _layer_names(path: Path, n_layers: int | None) -> list[str]:
    """ "a/layers/b" -> ["a/layers_0/b", ...] for a stacked module (n_layers given), else ["a/b"]."""
    if n_layers is None:
        return ["/".join(path)]
    i = path.index("layers")
    return ["/".join(path[:i] + (f"layers_{layer}",) + path[i + 1 :]) for layer in range(n_layers)]


def as_module(model: nn.Module | ModelConfig, base_params: Mapping) -> nn.Module:
    """A linen module from a module or a ModelConfig (ScalarHeadModel if the tree has "transformer")."""
    if isinstance(model, ModelConfig):
        return ScalarHeadModel(model) if "transformer" in base_params else Transformer(model)
    return model


def _get(tree: Mapping, path: Path):
    for k in path:
        tree = tree[k]
    return tree


def dense_sites(model: nn.Module | ModelConfig, base_params: Mapping) -> dict[Path, DenseSite]:
    """Every Dense projection of `model`, found by tracing one token abstractly (no FLOPs)."""
    module = as_module(model, base_params)
    found: dict[Path, tuple[int, int]] = {}

    def record(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name == "__call__" and isinstance(mod, Dense):
            found[tuple(mod.path)] = (mod.in_dims, len(tuple(mod.features)))
        return next_fun(*args, **kwargs)

    ids = jnp.zeros((1, 1), jnp.int32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda p: module.apply({"params": p}, ids, ids, ids + 1), base_params)
    sites = {}
    for path, (in_dims, out_dims) in found.items():
        shape = tuple(_get(base_params, path + ("kernel",)).shape)
        stacked = len(shape) == in_dims + out_dims + 1
        sites[path] = DenseSite(path, in_dims, shape, stacked)
    return sites


def select_targets(
    model: nn.Module | ModelConfig, base_params: Mapping, lora_config: LoraConfig
) -> dict[Path, DenseSite]:
    """The Dense sites selected by `lora_config.target_modules` (see jaxalign.lora.config).

    Raises ValueError if nothing is selected, if a pattern names a parameter that is not a Dense
    projection (embeddings, lm_head, norms), or if it selects only some layers of a stacked kernel.
    """
    sites = dense_sites(model, base_params)
    patterns = lora_config.target_modules
    chosen = {}
    for path, site in sites.items():
        hits = [matches(patterns, name) for name in site.layer_names()]
        if all(hits):
            chosen[path] = site
        elif any(hits):
            raise ValueError(
                f"target_modules {list(patterns)} select only some layers of the stacked "
                f"(scan_layers) kernel {'/'.join(path)}: one stacked kernel has one adapter "
                "per layer for all layers; use scan_layers=False to adapt a subset of layers"
            )
    site_names = {n for s in sites.values() for n in s.layer_names()}
    module_paths = {"/".join(p[:-1]) for p in flax.traverse_util.flatten_dict(dict(base_params))}
    for pattern in patterns:
        if not any(matches([pattern], n) for n in site_names):
            others = sorted(m for m in module_paths if matches([pattern], m))
            if others:
                raise ValueError(
                    f"target_modules pattern {pattern!r} selects {others[:3]}, which are not "
                    "Dense projections; LoRA applies to attention q/k/v/o and MLP "
                    "gate/up/down projections only"
                )
    if not chosen:
        names = sorted({p[-1] for p in sites})
        raise ValueError(
            f"target_modules {list(patterns)} select no projection; the model's projections "
            f"are {names} (paths like {'/'.join(next(iter(sites)))!r})"
        )
    return chosen


def select_modules_to_save(base_params: Mapping, lora_config: LoraConfig) -> list[Path]:
    """Module paths (parents of parameter leaves) trained in full: `lora_config.modules_to_save`, or by
    default ("score",) for a scalar-head tree ({"transformer", "score"}) and none for a causal LM.

    Raises ValueError for a pattern that selects no module, or only some layers of a stacked module.
    """
    patterns = lora_config.modules_to_save
    if patterns is None:
        return [("score",)] if "transformer" in base_params and "score" in base_params else []
    leaves = flax.traverse_util.flatten_dict(dict(base_params))
    modules = sorted({p[:-1] for p in leaves})
    chosen, hit = [], set()
    for path in modules:
        first = next(v for k, v in leaves.items() if k[:-1] == path)
        names = _layer_names(path, first.shape[0] if "layers" in path else None)
        hits = [matches(patterns, n) for n in names]
        if all(hits):
            chosen.append(path)
        elif any(hits):
            raise ValueError(
                f"modules_to_save {list(patterns)} select only some layers of the stacked "
                f"(scan_layers) module {'/'.join(path)}; use scan_layers=False"
            )
        hit.update(p for p in patterns if any(matches([p], n) for n in names))
    missing = [p for p in patterns if p not in hit]
    if missing:
        raise ValueError(
            f"modules_to_save pattern(s) {missing} select no module (modules look like "
            f"{['/'.join(m) for m in modules[:3]]})"
        )
    return chosen


# --------------------------------------------------------------------------------------- the tree
def _set(tree: dict, path: Path, value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def adapter_paths(lora_params: Mapping) -> list[Path]:
    """Module paths holding an adapter (parents of lora_a leaves)."""
    flat = flax.traverse_util.flatten_dict(dict(lora_params))
    return [p[:-1] for p in flat if p[-1] == LORA_A]


def saved_leaf_paths(lora_params: Mapping) -> list[Path]:
    """Parameter paths of the modules trained in full (every leaf that is not lora_a / lora_b)."""
    flat = flax.traverse_util.flatten_dict(dict(lora_params))
    return [p for p in flat if p[-1] not in (LORA_A, LORA_B)]


def init_lora(
    model: nn.Module | ModelConfig, base_params: Mapping, lora_config: LoraConfig, rng: jax.Array
) -> dict:
    """Fresh adapters for the selected projections: A as PEFT initialises it, B = 0 (so the adapted
    model starts equal to the base). Jittable (e.g. with `out_shardings=lora_shardings(...)`).

    All A's come from one random draw (one threefry op to compile, not one per module), split in
    path order. The modules to save start as float32 copies of the base's parameters.

    Args:
      model: Transformer / ScalarHeadModel (or their ModelConfig) that `base_params` belongs to.
      base_params: the frozen base tree (arrays; ShapeDtypeStructs when no module is saved in full).
      lora_config: rank, targets, init, modules_to_save.
      rng: PRNG key.
    Returns:
      {module path...: {"lora_a": [(L,) *in, r], "lora_b": [(L,) r, *out]}} float32, plus
      {saved module path...: {name: base leaf as float32}}.
    """
    r = lora_config.rank
    sites = sorted(select_targets(model, base_params, lora_config).items())
    saved = select_modules_to_save(base_params, lora_config)
    both = sorted("/".join(p) for p in set(saved) & {p for p, _ in sites})
    if both:
        raise ValueError(f"{both} are both LoRA targets and modules_to_save; a module can be only one")
    a_shapes = [(site.kernel_shape[:1] if site.stacked else ()) + site.in_shape + (r,) for _, site in sites]
    total = sum(math.prod(s) for s in a_shapes)
    if lora_config.init == "kaiming":
        # torch kaiming_uniform_(a=sqrt(5)) on lora_A.weight [r, in]: U(-1/sqrt(in), 1/sqrt(in)).
        draw = jax.random.uniform(rng, (total,), jnp.float32, -1.0, 1.0)
    else:  # "gaussian": N(0, 1/r) as PEFT's init_lora_weights="gaussian"
        draw = jax.random.normal(rng, (total,), jnp.float32)
    out: dict = {}
    offset = 0
    for (path, site), a_shape in zip(sites, a_shapes):
        n = math.prod(a_shape)
        unit = draw[offset : offset + n].reshape(a_shape)
        offset += n
        a = unit / math.sqrt(math.prod(site.in_shape)) if lora_config.init == "kaiming" else unit / r
        lead = site.kernel_shape[:1] if site.stacked else ()
        b = jnp.zeros(lead + (r,) + site.out_shape, jnp.float32)
        _set(out, path, {LORA_A: a, LORA_B: b})
    for path in saved:
        node = _get(base_params, path)
        leaves = {k: v for k, v in node.items() if not isinstance(v, Mapping)}
        if any(isinstance(v, jax.ShapeDtypeStruct) for v in leaves.values()):
            raise ValueError(f"modules_to_save copies {'/'.join(path)} from the base: pass arrays")
        _set(out, path, {k: jnp.asarray(v, jnp.float32) for k, v in leaves.items()})
    return out


def lora_logical_axes(lora_params: Mapping, base_logical_axes: Mapping) -> dict:
    """Logical axis names for the adapters, borrowed from their kernels: A's input dims (and [L]) as the
    kernel's input dims, B's output dims as the kernel's output dims, the rank axis replicated (None).
    A saved module's copies take the axes of the base leaves they replace.

    Args:
      lora_params: adapter tree (arrays or ShapeDtypeStructs).
      base_logical_axes: `jaxalign.models.param_logical_axes(config, module)` of the base.
    """
    out: dict = {}
    for path in adapter_paths(lora_params):
        k_axes = tuple(_get(base_logical_axes, path + ("kernel",)))
        node = _get(lora_params, path)
        a_nd, b_nd = len(node[LORA_A].shape), len(node[LORA_B].shape)
        lead = a_nd + b_nd - 2 - len(k_axes)  # 1 for stacked ([L]) adapters, else 0
        n_in = a_nd - 1  # [L] + input dims
        _set(out, path, {LORA_A: k_axes[:n_in] + (None,), LORA_B: k_axes[:lead] + (None,) + k_axes[n_in:]})
    for path in saved_leaf_paths(lora_params):
        _set(out, path, tuple(_get(base_logical_axes, path)))
    return out


def lora_shardings(
    lora_params: Mapping, base_logical_axes: Mapping, mesh: Mesh, rules=LOGICAL_AXIS_RULES
) -> dict:
    """NamedShardings for the adapters on `mesh` (dims the mesh doesn't divide stay replicated)."""
    return logical_to_shardings(
        lora_logical_axes(lora_params, base_logical_axes), mesh, rules, shapes=lora_params
    )


def attach_lora(base_params: Mapping, lora_params: Mapping | None) -> dict:
    """The base tree with lora_a/lora_b added next to each adapted kernel and the saved modules' leaves
    in place of the base's (a dict union: no copies)."""
    if lora_params is None:
        return base_params
    out = dict(base_params)
    for k, v in lora_params.items():
        if k in (LORA_A, LORA_B):
            out[k] = v
        elif k not in base_params:
            raise ValueError(
                f"adapter path component {k!r} is not in the base parameters (have {sorted(base_params)})"
            )
        elif isinstance(v, Mapping):
            out[k] = attach_lora(base_params[k], v)
        else:  # a leaf of a module trained in full
            out[k] = v
    return out


# ------------------------------------------------------------------------------------- the forward
def _interceptor(scale: float, dropout: float):
    """Adds scale · (dropout(x) A) B to each Dense call whose scope has adapters."""

    def intercept(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        mod = context.module
        if (
            context.method_name != "__call__"
            or not isinstance(mod, Dense)
            or not mod.has_variable("params", LORA_A)
        ):
            return y
        x = args[0]
        a = mod.get_variable("params", LORA_A)  # [*in, r]
        b = mod.get_variable("params", LORA_B)  # [r, *out]
        dtype = jnp.dtype(mod.config.dtype)
        r = a.shape[-1]
        x2 = x.reshape((-1, math.prod(x.shape[-mod.in_dims :]))).astype(dtype)  # [N, in]
        if dropout > 0.0 and mod.has_rng("dropout"):
            keep = jax.random.bernoulli(mod.make_rng("dropout"), 1.0 - dropout, x2.shape)
            x2 = jnp.where(keep, x2 / (1.0 - dropout), 0.0).astype(dtype)
        h = jnp.dot(x2, a.reshape((-1, r)).astype(dtype)) * scale  # [N, r]
        delta = jnp.dot(h.astype(dtype), b.reshape((r, -1)).astype(dtype))  # [N, out]
        return y + delta.reshape(y.shape).astype(y.dtype)

    return intercept


class LoraModel:
    """A stand-in for a linen model in code that calls `model.apply({"params": p}, ...)`.

    `p` is either `attach_lora(base, lora)` (the adapted policy) or the plain base tree (adapters off:
    the reference), so a loss written against `model.apply` needs no change. Dropout on the low-rank
    branch runs only when `rngs={"dropout": key}` is passed (with scan_layers its mask repeats across
    layers, since nn.scan broadcasts that rng stream).
    """

    def __init__(self, model: nn.Module, lora_config: LoraConfig):
        self.model = model
        self.lora_config = lora_config

    @property
    def config(self):
        return self.model.config

    def apply(self, variables, *args, rngs=None, **kwargs):
        cfg = self.lora_config
        with nn.intercept_methods(_interceptor(cfg.scale, cfg.dropout)):
            return self.model.apply(variables, *args, rngs=rngs, **kwargs)


def apply_lora(
    model: nn.Module,
    base_params: Mapping,
    lora_params: Mapping | None,
    *args,
    lora_config: LoraConfig | None = None,
    dropout_rng: jax.Array | None = None,
    **kwargs,
):
    """`model.apply` with adapters: y = x W + scale · (x A) B on every adapted projection.

    Args:
      model: Transformer or ScalarHeadModel.
      base_params: frozen base tree.
      lora_params: adapter tree, or None for the base model itself (the DPO/PPO reference).
      *args, **kwargs: the model's inputs (input_ids, positions, segment_ids, cache=..., ...).
      lora_config: needed (for the scale) when lora_params is given.
      dropout_rng: key for adapter dropout (training); None = deterministic.
    Returns:
      whatever `model.apply` returns (logits [B, T, V] float32, ...).
    """
    if lora_params is None:
        return model.apply({"params": base_params}, *args, **kwargs)
    if lora_config is None:
        raise ValueError("apply_lora needs lora_config= (its alpha/rank give the scale)")
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return LoraModel(model, lora_config).apply(
        {"params": attach_lora(base_params, lora_params)}, *args, rngs=rngs, **kwargs
    )


def lora_loss_fn(loss_fn):
    """Adapts an objective's `loss_fn(params, ref_params, batch)` (built on a `LoraModel`) to training
    the adapters only: returns `f(lora_params, base_params, batch) = loss_fn(attach_lora(base, lora),
    base, batch)`. The base doubles as the reference policy (adapters off), so the train step's
    `(state.params, ref_params)` become `(adapters, base)`: differentiate w.r.t. the first argument,
    and neither the base's weight gradients nor its optimiser state ever exist."""

    def wrapped(lora_params, base_params, batch):
        return loss_fn(attach_lora(base_params, lora_params), base_params, batch)

    return wrapped


# ------------------------------------------------------------------------------------------ export
def lora_delta(a: jax.Array, b: jax.Array, kernel_shape: tuple[int, ...], scale: float) -> jax.Array:
    """scale · A B in the kernel's layout, float32: A [(L,) *in, r], B [(L,) r, *out] -> kernel_shape."""
    lead = len(a.shape) + len(b.shape) - 2 - len(kernel_shape)
    r = a.shape[-1]
    a2 = a.astype(jnp.float32).reshape(a.shape[:lead] + (-1, r))  # [(L,) in, r]
    b2 = b.astype(jnp.float32).reshape(b.shape[:lead] + (r, -1))  # [(L,) r, out]
    return (scale * jnp.matmul(a2, b2, precision=jax.lax.Precision.HIGHEST)).reshape(kernel_shape)


def merge_lora(base_params: Mapping, lora_params: Mapping, lora_config: LoraConfig) -> dict:
    """Base params with W <- W + scale · A B (in the kernel's dtype) for export or fast inference, and
    the saved modules' trained copies in place of the base's.

    Only the adapted kernels and saved leaves are new arrays; every other leaf is the base's own array.
    """
    out = jax.tree.map(lambda x: x, dict(base_params))  # fresh dict structure, same leaves
    for path in adapter_paths(lora_params):
        node = _get(lora_params, path)
        kernel = _get(base_params, path + ("kernel",))
        delta = lora_delta(node[LORA_A], node[LORA_B], tuple(kernel.shape), lora_config.scale)
        _set(out, path + ("kernel",), (kernel.astype(jnp.float32) + delta).astype(kernel.dtype))
    for path in saved_leaf_paths(lora_params):
        _set(out, path, jnp.asarray(_get(lora_params, path), _get(base_params, path).dtype))
    return out
