"""Hugging Face PEFT adapter directories <-> jaxalign adapter trees.

    save_peft_adapter("out/adapter", lora, lora_cfg, model_config, base_model_name_or_path="meta/x")
    # torch: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("meta/x"), "out/adapter")
    #        (a scalar-head tree: AutoModelForSequenceClassification.from_pretrained(..., num_labels=1))
    lora, lora_cfg = load_peft_adapter("out/adapter", base_params, model_config)

A directory holds `adapter_config.json` (peft_type "LORA", task_type, r, lora_alpha, lora_dropout,
target_modules, use_rslora, rank_pattern, alpha_pattern, modules_to_save, ...) and
`adapter_model.safetensors` with, per adapted HF Linear / Conv1D `<module>` of rank r_m:
    base_model.model.<module>.lora_A.weight   [r_m, in]   (ours: lora_a [*in, r_m], transposed)
    base_model.model.<module>.lora_B.weight   [out, r_m]  (ours: lora_b [r_m, *out], transposed)
and per parameter of a module trained in full (`modules_to_save`; a scalar head's `score`):
    base_model.model.<module>.weight          (the HF layout of the whole parameter, e.g. score [1, D])
`<module>` is the transformers module name (model.layers.0.self_attn.q_proj, transformer.h.0.attn.c_attn,
score), taken from the naming map of jaxalign.checkpoints.hf.

Scales: PEFT scales module m by alpha_m / r_m (alpha_m / sqrt(r_m) with rsLoRA), with r_m and alpha_m
from rank_pattern / alpha_pattern or else r / lora_alpha; jaxalign has one scale s = alpha / r for the
whole tree and lets ranks differ per module. Saving writes rank_pattern {m: r_m} and alpha_pattern
{m: s · r_m} for modules whose rank is not r; loading folds (alpha_m / r_m) / s into B. Both exact.

Scalar-head models (reward models, critics: {"transformer": ..., "score": ...}) save as task_type
"SEQ_CLS" with the score head in `modules_to_save`, the layout PEFT gives `*ForSequenceClassification`.

GPT-2's fused c_attn Conv1D ([D, 3D]: q | k | v on the output axis) is one PEFT adapter, while jaxalign
adapts q_proj, k_proj and v_proj separately (Conv1D weights are [in, out] but PEFT's lora_A / lora_B are
Linears as for any module, with fan_in_fan_out=True in the config). Saving: the present ones of
(A_q, B_q), (A_k, B_k), (A_v, B_v), of ranks r_q, r_k, r_v, become one adapter of rank r_q + r_k + r_v,
    A_c = [A_q | A_k | A_v]   [D, r_q + r_k + r_v]
    B_c = blockdiag(B_q, B_k, B_v)   [r_q + r_k + r_v, 3D]   (zero blocks for absent projections)
so x A_c B_c = [x A_q B_q | x A_k B_k | x A_v B_v]. Loading a c_attn adapter (A_c [D, r], B_c [r, 3D]):
q, k and v each get A_c and their third of B_c's columns, minus the rank components whose B part is zero
(those add nothing), and a projection whose part of B_c is all zero gets no adapter, unless all of B_c is
zero (a fresh adapter: q, k, v all get A_c and zero B). Our own files thus load back as the very tree
they were written from. Stacked (scan_layers) adapters of unequal per-layer rank are zero-padded to the
largest rank (exact).

Not supported (clear errors): PEFT features beyond plain LoRA (DoRA, bias training, embedding adapters,
layer replication, trainable tokens, target_parameters), and GPT-2's c_attn as a module to save.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

# The one HF naming map (ours -> transformers names) and its layout conversions.
from jaxalign.checkpoints.hf import _hf_name, _to_hf, _to_ours
from jaxalign.errors import CheckpointError
from jaxalign.lora.adapters import (
    LORA_A,
    LORA_B,
    _get,
    _set,
    adapter_paths,
    as_module,
    dense_sites,
    lora_shardings,
    saved_leaf_paths,
)
from jaxalign.lora.config import ALL_PROJECTIONS, LoraConfig
from jaxalign.models.config import ModelConfig
from jaxalign.models.transformer import param_logical_axes
from jaxalign.sharding import LOGICAL_AXIS_RULES

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_LAYER_RE = re.compile(r"layers_(\d+)")


def _is_scalar_head(tree: Mapping) -> bool:
    return "transformer" in tree or "score" in tree


def _layer_items(path: tuple[str, ...], n_layers: int | None):
    """Our module path -> [(layer index or None, path for the HF map, per-layer selector or None)].

    The HF map takes paths without ScalarHeadModel's "transformer" wrapper and, inside a decoder layer,
    relative to the layer."""
    if path[0] == "transformer":
        path = path[1:]
    if path[0] == "layers":  # stacked (scan_layers)
        return [(i, path[1:], i) for i in range(n_layers)]
    m = _LAYER_RE.fullmatch(path[0])
    if not m:
        return [(None, path, None)]
    return [(int(m.group(1)), path[1:], None)]


def _hf_module(model_config: ModelConfig, rel: tuple[str, ...], layer: int | None) -> tuple[str, Any]:
    """An adapted projection -> (HF module name, kind): kind "linear" / "conv1d", or ("split", j) for the
    j-th of q, k, v in GPT-2's fused c_attn."""
    name, kind = _hf_name(model_config, rel + ("kernel",), layer)
    if kind not in ("linear", "conv1d") and not isinstance(kind, tuple):
        raise ValueError(
            f"{'/'.join(rel)} maps to {name!r} ({kind}): LoRA adapts Linear and Conv1D modules only"
        )
    return name[: -len(".weight")], kind


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _all_hf_modules(model_config: ModelConfig) -> set[str]:
    """HF names of every projection LoRA can adapt in this architecture (all layers)."""
    out = set()
    for p in ALL_PROJECTIONS:
        rel = ("mlp" if p in ("gate_proj", "up_proj", "down_proj") else "attn", p)
        for layer in range(model_config.num_layers):
            try:
                out.add(_hf_module(model_config, rel, layer)[0])
            except KeyError:  # e.g. GPT-2 has no gate_proj
                break
    return out


def _target_modules(module_names: list[str], model_config: ModelConfig) -> list[str] | str:
    """PEFT `target_modules`: the short names ("q_proj") when they select exactly the adapted modules,
    else a regex that PEFT full-matches against module names, listing each adapted module."""
    short = sorted({n.rsplit(".", 1)[-1] for n in module_names})
    if {n for n in _all_hf_modules(model_config) if n.rsplit(".", 1)[-1] in short} == set(module_names):
        return short
    return "|".join(re.escape(n) for n in sorted(module_names))


def _pattern(values: dict[str, int], default: int) -> dict[str, int]:
    """PEFT's rank_pattern: {key: r_m} for modules whose rank is not `default`, keyed by the short name
    where every adapted module of that short name has that rank, else by the escaped full name (PEFT
    matches a key as a regex against the end of module names)."""
    odd = {n: v for n, v in values.items() if v != default}
    by_short: dict[str, set] = {}
    for n, v in values.items():
        by_short.setdefault(n.rsplit(".", 1)[-1], set()).add(v)
    out = {}
    for n, v in sorted(odd.items()):
        short = n.rsplit(".", 1)[-1]
        out[short if len(by_short[short]) == 1 else re.escape(n)] = v
    return out


def _fuse_qkv(parts: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """{j: (A_j [in, r_j], B_j [r_j, w])} for j in q=0, k=1, v=2 -> HF (lora_A [R, in], lora_B [3w, R]),
    R = sum of r_j: A side by side, B block-diagonal (zero for an absent j)."""
    w = next(iter(parts.values()))[1].shape[1]
    order = sorted(parts)
    a = np.concatenate([parts[j][0] for j in order], axis=1)  # [in, R]
    b = np.zeros((a.shape[1], 3 * w), np.float32)  # [R, 3w]
    row = 0
    for j in order:
        r_j = parts[j][0].shape[1]
        b[row : row + r_j, j * w : (j + 1) * w] = parts[j][1]
        row += r_j
    return a.T, b.T


def save_peft_adapter(
    path: str | os.PathLike,
    lora_params: Mapping,
    lora_config: LoraConfig,
    model_config: ModelConfig,
    base_model_name_or_path: str = "",
) -> None:
    """Writes adapter_config.json + adapter_model.safetensors that `peft.PeftModel.from_pretrained`
    loads onto the transformers model of `model_config` (`*ForCausalLM`, or for a scalar-head tree
    `*ForSequenceClassification` with num_labels=1). All processes call this (multi-host gathers);
    process 0 writes. Tensors are saved as float32."""
    lora_ab: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # HF module -> (lora_A [r, in], lora_B [out, r])
    fused: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}  # c_attn -> {j: (A [in, r], B [r, w])}
    for mod_path in adapter_paths(lora_params):
        node = _get(lora_params, mod_path)
        a_all, b_all = _host(node[LORA_A]), _host(node[LORA_B])
        n_layers = a_all.shape[0] if "layers" in mod_path else None  # stacked: [L, ...]
        for layer, rel, sel in _layer_items(mod_path, n_layers):
            a = a_all if sel is None else a_all[sel]  # [*in, r]
            b = b_all if sel is None else b_all[sel]  # [r, *out]
            r_m = a.shape[-1]
            a2, b2 = a.reshape(-1, r_m).astype(np.float32), b.reshape(r_m, -1).astype(np.float32)
            name, kind = _hf_module(model_config, rel, layer)
            if isinstance(kind, tuple):
                fused.setdefault(name, {})[kind[1]] = (a2, b2)
            else:
                lora_ab[name] = (a2.T, b2.T)
    for name, parts in fused.items():
        lora_ab[name] = _fuse_qkv(parts)

    tensors: dict[str, np.ndarray] = {}
    for name, (a, b) in lora_ab.items():
        tensors[_PREFIX + name + ".lora_A.weight"] = np.ascontiguousarray(a, np.float32)
        tensors[_PREFIX + name + ".lora_B.weight"] = np.ascontiguousarray(b, np.float32)
    saved_modules = set()
    for leaf_path in saved_leaf_paths(lora_params):
        arr = _host(_get(lora_params, leaf_path))
        n_layers = arr.shape[0] if "layers" in leaf_path else None
        for layer, rel, sel in _layer_items(leaf_path[:-1], n_layers):
            hf_name, kind = _hf_name(model_config, rel + leaf_path[-1:], layer)
            if isinstance(kind, tuple):
                raise ValueError(
                    f"{'/'.join(leaf_path)} is part of the fused {hf_name}: PEFT saves whole modules, so it "
                    "cannot be a module to save on its own"
                )
            value = arr if sel is None else arr[sel]
            tensors[_PREFIX + hf_name] = np.ascontiguousarray(
                _to_hf(value, kind, rel + leaf_path[-1:]), np.float32
            )
            saved_modules.add(hf_name.rsplit(".", 1)[0])
    if jax.process_index() != 0:
        return

    r = lora_config.rank
    rank_pattern = _pattern({n: a.shape[0] for n, (a, _) in lora_ab.items()}, r)
    # alpha_m = s · r_m (s · sqrt(r_m) with rsLoRA) keeps PEFT's alpha_m / r_m equal to our one scale s.
    alpha_pattern = {
        k: lora_config.scale * (math.sqrt(r_m) if lora_config.use_rslora else r_m)
        for k, r_m in rank_pattern.items()
    }
    config: dict[str, Any] = dict(
        peft_type="LORA",
        task_type="SEQ_CLS" if _is_scalar_head(lora_params) else "CAUSAL_LM",
        base_model_name_or_path=base_model_name_or_path or None,
        revision=None,
        inference_mode=True,
        r=r,
        lora_alpha=lora_config.alpha,
        lora_dropout=lora_config.dropout,
        use_rslora=lora_config.use_rslora,
        target_modules=_target_modules(sorted(lora_ab), model_config),
        init_lora_weights=True if lora_config.init == "kaiming" else "gaussian",
        bias="none",
        # Only how PEFT treats the base weight: Conv1D stores [in, out] (PEFT would force True anyway).
        fan_in_fan_out=model_config.model_type == "gpt2",
        use_dora=False,
        modules_to_save=sorted(saved_modules) or None,
        layers_to_transform=None,
        layers_pattern=None,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))


_UNSUPPORTED = {  # PEFT config field -> value that plain LoRA has
    "use_dora": False,
    "bias": "none",
    "trainable_token_indices": None,
    "layer_replication": None,
    "use_qalora": False,
    "lora_bias": False,
    "target_parameters": None,
}
_TASKS = (None, "CAUSAL_LM", "SEQ_CLS")
_LORA_KEY = re.compile(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.default)?\.weight")
_SAVED_KEY = re.compile(r"(?:base_model\.model\.)?(.+?)(?:\.modules_to_save(?:\.default)?)?\.(\w+)")


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    if not file.exists():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path}")
    cfg = json.loads(file.read_text())
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type={cfg.get('peft_type')!r}; only LORA adapters are supported")
    for key, plain in _UNSUPPORTED.items():
        value = cfg.get(key, plain)
        if value != plain and not (value in (None, [], {}) and plain in (None, [], {})):
            raise CheckpointError(
                f"{path}: PEFT option {key}={value!r} is not supported (plain LoRA has {plain!r})"
            )
    if cfg.get("task_type") not in _TASKS:
        raise CheckpointError(f"{path}: task_type={cfg['task_type']!r}; only {_TASKS[1:]} adapters load")
    return cfg


def _pattern_value(pattern: Mapping[str, Any], name: str, default):
    """PEFT's lookup (peft.utils.other.get_pattern_key): the first key that regex-matches the end of
    the module name after a dot (or the whole name)."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _split_qkv(a_hf: np.ndarray, b_hf: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """HF c_attn (lora_A [R, in], lora_B [3w, R]) -> {j: (A_j [in, r_j], B_j [r_j, w])} for q, k, v:
    each j keeps the rank components where its third of B is nonzero; all three keep everything when B
    is all zero (see module docstring)."""
    w = b_hf.shape[0] // 3
    out = {}
    for j in range(3):
        b_j = b_hf[j * w : (j + 1) * w]  # [w, R]
        if not b_hf.any():
            keep = np.arange(b_hf.shape[1])
        else:
            keep = np.flatnonzero(b_j.any(axis=0))
            if keep.size == 0:
                continue
        out[j] = (a_hf[keep].T, b_j[:, keep].T)
    return out


def _stack_padded(per_layer: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """[(A_i [*in, r_i], B_i [r_i, *out])] -> (A [L, *in, R], B [L, R, *out]), R = max r_i, each layer
    zero-padded on its rank axis (zero components add nothing)."""
    rank = max(a.shape[-1] for a, _ in per_layer)
    a = np.stack([np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, rank - a.shape[-1])]) for a, _ in per_layer])
    b = np.stack([np.pad(b, [(0, rank - b.shape[0])] + [(0, 0)] * (b.ndim - 1)) for _, b in per_layer])
    return a, b


def load_peft_adapter(
    path: str | os.PathLike,
    base_params: Mapping,
    model_config: ModelConfig,
    mesh: Mesh | None = None,
    rules=LOGICAL_AXIS_RULES,
) -> tuple[dict, LoraConfig]:
    """Reads a PEFT LoRA directory into (adapter tree for `base_params`' layout, LoraConfig).

    The tensors present decide which projections are adapted and which modules are trained in full;
    `target_modules` / `modules_to_save` of the returned config list them (short names when every layer
    has them; modules_to_save None when it is the default: a scalar head's score). A SEQ_CLS adapter
    needs a scalar-head `base_params` (load_hf_model(..., head="score")). With `mesh`, adapters are
    placed with `lora_shardings` (sharded like their kernels); otherwise on the default device.
    """
    path = Path(path)
    cfg = _read_config(path)
    scalar = "transformer" in base_params
    if cfg.get("task_type") == "SEQ_CLS" and not scalar:
        raise ValueError(
            f"{path} is a SEQ_CLS adapter: load it onto a scalar-head model "
            "(load_hf_model(..., head='score'))"
        )
    if not (path / WEIGHTS_FILE).exists():
        found = (
            " (found adapter_model.bin: pickled weights are refused)"
            if (path / "adapter_model.bin").exists()
            else ""
        )
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {path}{found}")
    r, alpha, rslora = int(cfg["r"]), float(cfg["lora_alpha"]), bool(cfg.get("use_rslora", False))
    scale = LoraConfig(rank=r, alpha=alpha, use_rslora=rslora).scale
    sites = dense_sites(model_config, base_params)
    by_hf: dict[str, list[tuple[Any, int | None, Any]]] = {}  # HF module -> [(site, layer, kind)]
    for site in sites.values():
        for layer, rel, _ in _layer_items(site.path, site.kernel_shape[0] if site.stacked else None):
            name, kind = _hf_module(model_config, rel, layer)
            by_hf.setdefault(name, []).append((site, layer, kind))
    by_hf_param: dict[
        str, tuple[tuple[str, ...], int | None, Any]
    ] = {}  # HF tensor -> (our leaf, layer, kind)
    for leaf_path, leaf in flax.traverse_util.flatten_dict(dict(base_params)).items():
        n_layers = leaf.shape[0] if "layers" in leaf_path else None
        for layer, rel, _ in _layer_items(leaf_path[:-1], n_layers):
            try:
                name, kind = _hf_name(model_config, rel + leaf_path[-1:], layer)
            except KeyError:
                continue
            by_hf_param[name] = (leaf_path, layer, kind)

    per_module: dict[str, dict[str, np.ndarray]] = {}
    saved: dict[str, np.ndarray] = {}
    with safe_open(path / WEIGHTS_FILE, framework="numpy") as f:
        for key in f.keys():
            m = _LORA_KEY.fullmatch(key)
            if m and m.group(1) in by_hf:
                per_module.setdefault(m.group(1), {})[m.group(2)] = f.get_tensor(key)
                continue
            m = _SAVED_KEY.fullmatch(key)
            name = m and f"{m.group(1)}.{m.group(2)}"
            if not m or name not in by_hf_param:
                raise ValueError(
                    f"{path}: tensor {key!r} is neither a LoRA A/B weight of a projection nor a "
                    f"parameter of this {model_config.model_type} model"
                )
            saved[name] = f.get_tensor(key)

    per_layer: dict[tuple[str, ...], dict[int | None, tuple[np.ndarray, np.ndarray]]] = {}
    for name, ab in per_module.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise ValueError(f"{path}: {name} has {sorted(ab)}, needs both lora_A and lora_B")
        a_hf, b_hf = ab["lora_A"].astype(np.float32), ab["lora_B"].astype(np.float32)  # [r_m, in], [out, r_m]
        r_m = int(_pattern_value(cfg.get("rank_pattern"), name, r))
        if a_hf.shape[0] != r_m or b_hf.shape[1] != r_m:
            raise ValueError(f"{path}: {name} has rank {a_hf.shape[0]}/{b_hf.shape[1]}, config says {r_m}")
        alpha_m = float(_pattern_value(cfg.get("alpha_pattern"), name, alpha))
        b_hf = b_hf * (alpha_m / (math.sqrt(r_m) if rslora else r_m) / scale)  # PEFT's scale -> ours
        targets = by_hf[name]
        if isinstance(targets[0][2], tuple):  # GPT-2 c_attn: q, k, v
            parts = _split_qkv(a_hf, b_hf)
            pieces = [(site, layer, parts[kind[1]]) for site, layer, kind in targets if kind[1] in parts]
        else:
            ((site, layer, _),) = targets
            pieces = [(site, layer, (a_hf.T, b_hf.T))]
        for site, layer, (a, b) in pieces:  # a [in, r_j], b [r_j, out]
            r_j = a.shape[-1]
            per_layer.setdefault(site.path, {})[layer] = (
                a.reshape(site.in_shape + (r_j,)),
                b.reshape((r_j,) + site.out_shape),
            )

    lora: dict = {}
    for mod_path, layers in per_layer.items():
        site = sites[mod_path]
        if site.stacked:
            n = site.kernel_shape[0]
            if sorted(layers) != list(range(n)):
                raise ValueError(
                    f"{path}: {mod_path[-1]} adapters exist for layers {sorted(layers)} only; "
                    f"a scan_layers model needs all {n} (load with scan_layers=False)"
                )
            a, b = _stack_padded([layers[i] for i in range(n)])
        else:
            ((a, b),) = layers.values()
        _set(lora, mod_path, {LORA_A: a, LORA_B: b})

    saved_by_leaf: dict[tuple[str, ...], dict[int | None, np.ndarray]] = {}
    for name, arr in saved.items():
        leaf_path, layer, kind = by_hf_param[name]
        if isinstance(kind, tuple):
            raise CheckpointError(f"{path}: {name} is a fused q/k/v tensor; it cannot be a module to save")
        shape = _get(base_params, leaf_path).shape
        per_layer_shape = shape[1:] if "layers" in leaf_path else shape
        try:
            value = _to_ours(arr, kind, per_layer_shape)
        except ValueError:
            raise ValueError(f"{path}: {name} has shape {arr.shape}, the base's is {shape}") from None
        saved_by_leaf.setdefault(leaf_path, {})[layer] = value.astype(np.float32)
    for leaf_path, layers in saved_by_leaf.items():
        if "layers" in leaf_path:
            n = _get(base_params, leaf_path).shape[0]
            if sorted(layers) != list(range(n)):
                raise ValueError(f"{path}: {'/'.join(leaf_path)} is saved for layers {sorted(layers)} of {n}")
            _set(lora, leaf_path, np.stack([layers[i] for i in range(n)]))
        else:
            _set(lora, leaf_path, layers[None])

    our_names = [n for p in per_layer for n in sites[p].layer_names()]
    short = sorted({p[-1] for p in per_layer})
    all_names = [n for p, s in sites.items() if p[-1] in short for n in s.layer_names()]
    targets = tuple(short) if sorted(all_names) == sorted(our_names) else tuple(sorted(our_names))
    saved_modules = sorted({"/".join(p[:-1]) for p in saved_by_leaf})
    default = ["score"] if scalar else []
    init = cfg.get("init_lora_weights", True)
    lora_cfg = LoraConfig(
        rank=r,
        alpha=alpha,
        dropout=float(cfg.get("lora_dropout", 0.0)),
        target_modules=targets,
        use_rslora=rslora,
        init="gaussian" if init == "gaussian" else "kaiming",
        modules_to_save=None if saved_modules == default else tuple(saved_modules),
    )
    if mesh is not None:
        axes = param_logical_axes(model_config, as_module(model_config, base_params))
        shardings = lora_shardings(lora, axes, mesh, rules)
        lora = jax.tree.map(lambda x, s: jax.device_put(x, s), lora, shardings)
    else:
        lora = jax.tree.map(jnp.asarray, lora)
    return lora, lora_cfg
