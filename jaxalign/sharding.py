"""Device mesh and the one table mapping logical axis names onto mesh axes (MaxText-style).

Mesh axes:
  "data"   – pure data parallelism: parameters replicated, batch split.
  "fsdp"   – batch split AND parameters sharded along their "embed" dimension (ZeRO-3 style; XLA
             all-gathers weights per layer and reduce-scatters gradients).
  "tensor" – Megatron-style tensor parallelism: heads / MLP width / vocab split.
FSDP, TP and their mix are a change of `make_mesh(data=, fsdp=, tensor=)`, never of model code.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Ordered (logical name, mesh axis or tuple of mesh axes or None). The first rule for a name wins; a mesh
# axis already used by an earlier dimension of the same array is skipped (that dim stays replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),  # activations / data batches
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("head_dim", None),
    ("layers", None),  # stacked (scanned) layer axis
    ("positions", None),  # learned position table rows
    ("expert", None),  # mixture-of-experts weights' expert axis (expert parallelism: map it to a mesh axis)
)


def make_mesh(
    data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Mesh with axes ("data", "fsdp", "tensor"), AxisType.Auto; one size may be -1 (= the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"only one mesh size may be -1, got {sizes}")
    for k, v in sizes.items():
        if v != -1 and v < 1:
            raise ValueError(f"mesh size {k}={v} must be >= 1 or -1")
    known = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if len(devices) % known:
            raise ValueError(
                f"{len(devices)} devices are not divisible by the fixed mesh sizes {sizes}; "
                f"cannot fill {free[0]}=-1"
            )
        sizes[free[0]] = len(devices) // known
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(
            f"mesh data={sizes['data']} x fsdp={sizes['fsdp']} x tensor={sizes['tensor']} "
            f"needs {math.prod(sizes.values())} devices, have {len(devices)}"
        )
    grid = np.asarray(devices, dtype=object).reshape([sizes[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(
    logical_axes: Sequence[str | None],
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """One array's logical names -> PartitionSpec. With `shape`, a dim that the mesh axes don't divide
    evenly is left replicated (e.g. 2 kv heads on tensor=4)."""
    table = dict(reversed(tuple(rules)))  # first rule wins
    used: set[str] = set()
    out = []
    for i, name in enumerate(logical_axes):
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
        if shape is not None and axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
            axes = ()
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def _is_axes_leaf(x) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def logical_to_shardings(
    logical_axes_tree: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
    shapes: Any | None = None,
) -> Any:
    """Tree of logical-axis tuples -> tree of NamedSharding. `shapes` (optional, same tree of arrays or
    ShapeDtypeStructs) replicates dims the mesh doesn't divide."""
    if shapes is None:
        return jax.tree.map(
            lambda ax: NamedSharding(mesh, logical_to_spec(ax, mesh, rules)),
            logical_axes_tree,
            is_leaf=_is_axes_leaf,
        )
    return jax.tree.map(
        lambda ax, s: NamedSharding(mesh, logical_to_spec(ax, mesh, rules, s.shape)),
        logical_axes_tree,
        shapes,
        is_leaf=_is_axes_leaf,
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for [B, ...] batch arrays: B split over ("data", "fsdp")."""
    return NamedSharding(mesh, logical_to_spec(("batch",), mesh))


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> jax.Array:
    """`with_sharding_constraint` by logical names under the current mesh (`jax.set_mesh`); a no-op
    without one. Activations need it: the embedding lookup of an FSDP-sharded table comes out sharded
    along "embed", and without a constraint XLA keeps every token on every device and all-reduces the
    projections instead of splitting the batch (measured by `jaxalign.plan`: 8x the activation memory on
    8 devices)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, mesh, rules, x.shape))
