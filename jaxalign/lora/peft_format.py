"""Hugging Face PEFT adapter directories <-> jaxalign adapter trees (Llama family).

    save_peft_adapter("out/adapter", lora, lora_cfg, model_config, base_model_name_or_path="meta/x")
    # torch: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("meta/x"), "out/adapter")
    lora, lora_cfg = load_peft_adapter("out/adapter", base_params, model_config)

A directory holds `adapter_config.json` (peft_type "LORA", r, lora_alpha, lora_dropout, target_modules,
use_rslora, ...) and `adapter_model.safetensors` with, per adapted HF Linear `<module>`:
    base_model.model.<module>.lora_A.weight   [r, in]     (ours: lora_a [*in, r], transposed)
    base_model.model.<module>.lora_B.weight   [out, r]    (ours: lora_b [r, *out], transposed)
where `<module>` is the transformers module name, e.g. model.layers.0.self_attn.q_proj, taken from the
same naming map as jaxalign.checkpoints.hf. Supported: Llama, Mistral, Qwen2/3, Gemma causal LMs.
Not supported (clear errors): GPT-2 (its fused c_attn has one adapter for q, k and v together),
scalar-head models, and PEFT features beyond plain LoRA (DoRA, bias training, rank/alpha patterns,
modules_to_save, embedding adapters).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxalign.checkpoints.hf import _hf_name  # the one HF naming map (ours -> transformers names)
from jaxalign.lora.adapters import (
    LORA_A,
    LORA_B,
    _get,
    _set,
    adapter_paths,
    as_module,
    dense_sites,
    lora_shardings,
)
from jaxalign.lora.config import LoraConfig
from jaxalign.models.config import ModelConfig
from jaxalign.models.transformer import param_logical_axes
from jaxalign.sharding import LOGICAL_AXIS_RULES

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_LAYER_RE = re.compile(r"layers_(\d+)")


def _check_supported(model_config: ModelConfig, params: Mapping) -> None:
    if model_config.model_type == "gpt2":
        raise NotImplementedError(
            "PEFT adapters for GPT-2 are not supported: its fused c_attn projection "
            "holds q, k and v in one Linear, while jaxalign adapts them separately"
        )
    if "transformer" in params:
        raise NotImplementedError(
            "PEFT adapters for scalar-head models (reward/value) are not supported; "
            "export a causal-LM adapter or merge with merge_lora"
        )


def _layer_items(path: tuple[str, ...], n_layers: int | None):
    """Module path -> [(layer index, path inside the block, per-layer selector)]."""
    if path[0] == "layers":  # stacked (scan_layers)
        return [(i, path[1:], i) for i in range(n_layers)]
    m = _LAYER_RE.fullmatch(path[0])
    if not m:
        raise ValueError(f"adapter at {'/'.join(path)} is not inside a decoder layer")
    return [(int(m.group(1)), path[1:], None)]


def _hf_module(model_config: ModelConfig, rel: tuple[str, ...], layer: int) -> str:
    name, kind = _hf_name(model_config, rel + ("kernel",), layer)
    if kind != "linear" or not name.endswith(".weight"):
        raise NotImplementedError(f"{'/'.join(rel)} maps to {name!r} ({kind}), not a plain Linear")
    return name[: -len(".weight")]


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _target_modules(module_names: list[str], num_layers: int) -> list[str] | str:
    """PEFT `target_modules`: the short names ("q_proj") when every layer has exactly those adapters,
    else a regex that PEFT full-matches against module names, listing each adapted module."""
    short = sorted({n.rsplit(".", 1)[-1] for n in module_names})
    layers = {re.search(r"\.(\d+)\.", n).group(1) for n in module_names}
    if len(layers) == num_layers and len(module_names) == num_layers * len(short):
        return short
    return "|".join(re.escape(n) for n in sorted(module_names))


def save_peft_adapter(
    path: str | os.PathLike,
    lora_params: Mapping,
    lora_config: LoraConfig,
    model_config: ModelConfig,
    base_model_name_or_path: str = "",
) -> None:
    """Writes adapter_config.json + adapter_model.safetensors that `peft.PeftModel.from_pretrained`
    loads onto the transformers model of `model_config`. All processes call this (multi-host gathers);
    process 0 writes. Tensors are saved as float32."""
    _check_supported(model_config, lora_params)
    tensors: dict[str, np.ndarray] = {}
    r = lora_config.rank
    for mod_path in adapter_paths(lora_params):
        node = _get(lora_params, mod_path)
        a_all, b_all = _host(node[LORA_A]), _host(node[LORA_B])
        if a_all.shape[-1] != r or b_all.shape[int(mod_path[0] == "layers")] != r:
            raise ValueError(f"adapter {'/'.join(mod_path)} has rank {a_all.shape[-1]}, config says {r}")
        for layer, rel, sel in _layer_items(mod_path, a_all.shape[0]):
            a = a_all if sel is None else a_all[sel]  # [*in, r]
            b = b_all if sel is None else b_all[sel]  # [r, *out]
            name = _PREFIX + _hf_module(model_config, rel, layer)
            tensors[name + ".lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, r).T, np.float32)
            tensors[name + ".lora_B.weight"] = np.ascontiguousarray(b.reshape(r, -1).T, np.float32)
    if jax.process_index() != 0:
        return
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    modules = sorted(k[len(_PREFIX) : -len(".lora_A.weight")] for k in tensors if k.endswith("lora_A.weight"))
    config: dict[str, Any] = dict(
        peft_type="LORA",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name_or_path or None,
        revision=None,
        inference_mode=True,
        r=r,
        lora_alpha=lora_config.alpha,
        lora_dropout=lora_config.dropout,
        use_rslora=lora_config.use_rslora,
        target_modules=_target_modules(modules, model_config.num_layers),
        init_lora_weights=True if lora_config.init == "kaiming" else "gaussian",
        bias="none",
        fan_in_fan_out=False,
        use_dora=False,
        modules_to_save=None,
        layers_to_transform=None,
        layers_pattern=None,
        rank_pattern={},
        alpha_pattern={},
    )
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))


_UNSUPPORTED = {  # PEFT config field -> value that plain LoRA has
    "use_dora": False,
    "bias": "none",
    "fan_in_fan_out": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "modules_to_save": None,
    "trainable_token_indices": None,
    "layer_replication": None,
    "use_qalora": False,
    "lora_bias": False,
    "target_parameters": None,
}


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
            raise NotImplementedError(
                f"{path}: PEFT option {key}={value!r} is not supported (plain LoRA has {plain!r})"
            )
    if cfg.get("task_type") not in (None, "CAUSAL_LM"):
        raise NotImplementedError(f"{path}: task_type={cfg['task_type']!r}; only CAUSAL_LM adapters load")
    return cfg


def load_peft_adapter(
    path: str | os.PathLike,
    base_params: Mapping,
    model_config: ModelConfig,
    mesh: Mesh | None = None,
    rules=LOGICAL_AXIS_RULES,
) -> tuple[dict, LoraConfig]:
    """Reads a PEFT LoRA directory into (adapter tree for `base_params`' layout, LoraConfig).

    The tensors present decide which projections are adapted; `target_modules` of the returned config
    lists them (short names when every layer has them). With `mesh`, adapters are placed with
    `lora_shardings` (sharded like their kernels); otherwise on the default device.
    """
    path = Path(path)
    _check_supported(model_config, base_params)
    cfg = _read_config(path)
    if not (path / WEIGHTS_FILE).exists():
        found = (
            " (found adapter_model.bin: pickled weights are refused)"
            if (path / "adapter_model.bin").exists()
            else ""
        )
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {path}{found}")
    r = int(cfg["r"])
    sites = dense_sites(model_config, base_params)
    by_hf: dict[str, tuple[Any, int]] = {}  # HF module name -> (site, layer)
    for site in sites.values():
        for layer, rel, _ in _layer_items(site.path, site.kernel_shape[0] if site.stacked else None):
            by_hf[_hf_module(model_config, rel, layer)] = (site, layer)

    per_module: dict[str, dict[str, np.ndarray]] = {}
    with safe_open(path / WEIGHTS_FILE, framework="numpy") as f:
        for key in f.keys():
            m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.default)?\.weight", key)
            if not m or m.group(1) not in by_hf:
                raise ValueError(
                    f"{path}: tensor {key!r} is not a LoRA A/B weight of a projection of this "
                    f"{model_config.model_type} model"
                )
            per_module.setdefault(m.group(1), {})[m.group(2)] = f.get_tensor(key)

    per_layer: dict[tuple[str, ...], dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for name, ab in per_module.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise ValueError(f"{path}: {name} has {sorted(ab)}, needs both lora_A and lora_B")
        site, layer = by_hf[name]
        a_hf, b_hf = ab["lora_A"], ab["lora_B"]  # [r, in], [out, r]
        if a_hf.shape[0] != r or b_hf.shape[1] != r:
            raise ValueError(f"{path}: {name} has rank {a_hf.shape[0]}/{b_hf.shape[1]}, config r={r}")
        a = a_hf.T.reshape(site.in_shape + (r,)).astype(np.float32)
        b = b_hf.T.reshape((r,) + site.out_shape).astype(np.float32)
        per_layer.setdefault(site.path, {})[layer] = (a, b)

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
            a = np.stack([layers[i][0] for i in range(n)])
            b = np.stack([layers[i][1] for i in range(n)])
        else:
            ((a, b),) = layers.values()
        _set(lora, mod_path, {LORA_A: a, LORA_B: b})

    our_names = [n for p in per_layer for n in sites[p].layer_names()]
    short = sorted({p[-1] for p in per_layer})
    all_names = [n for p, s in sites.items() if p[-1] in short for n in s.layer_names()]
    targets = tuple(short) if sorted(all_names) == sorted(our_names) else tuple(sorted(our_names))
    init = cfg.get("init_lora_weights", True)
    lora_cfg = LoraConfig(
        rank=r,
        alpha=float(cfg["lora_alpha"]),
        dropout=float(cfg.get("lora_dropout", 0.0)),
        target_modules=targets,
        use_rslora=bool(cfg.get("use_rslora", False)),
        init="gaussian" if init == "gaussian" else "kaiming",
    )
    if mesh is not None:
        axes = param_logical_axes(model_config, as_module(model_config, base_params))
        shardings = lora_shardings(lora, axes, mesh, rules)
        lora = jax.tree.map(lambda x, s: jax.device_put(x, s), lora, shardings)
    else:
        lora = jax.tree.map(jnp.asarray, lora)
    return lora, lora_cfg
