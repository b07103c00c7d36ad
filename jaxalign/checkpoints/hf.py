"""Hugging Face checkpoints <-> jaxalign parameters, tensor by tensor.

    config, params = load_hf_model("path/to/hf_dir", mesh=mesh)               # onto the mesh directly
    save_hf_model("out_dir", config, params, tokenizer=tok)                    # transformers loads it

Loading reads one safetensors tensor at a time (with plain reads, not a memory map whose touched pages
would stay in the process's memory), converts it to our layout, and places it with its NamedSharding via
`jax.make_array_from_callback`: every device receives only its own shard and the host never holds more
than a few copies of one tensor. Scanned layers (`scan_layers`) are written one layer at a time into
their stacked array, allocated once on the mesh (a donated in-place update, never a second copy).

Export plans the files up front from the parameters' shapes and dtypes, then streams: one HF tensor at a
time is gathered (one layer of a scanned parameter; `process_allgather` for multi-host arrays, in the
same order on every process) and written straight to its place in its safetensors file, so a host holds
about one tensor, never the model. With several processes file i is written by process i % count (the
directory must be one that every process sees, as for training checkpoints); process 0 writes the
config, the index and the tokenizer. Files are written under a temporary name and renamed when complete.
Only safetensors are read: pickled `pytorch_model.bin` files are refused.

A missing, unreadable or mismatched checkpoint (no directory, no or corrupt config.json, an unsupported
model type, corrupt safetensors, a tensor missing or of another shape) raises `CheckpointError` naming
the path and what was expected.

Name mapping (HF Linear weights are [out, in], we store [in, ..., out, ...]; GPT-2's Conv1D weights are
already [in, out], and its fused `c_attn` [D, 3D] splits into q/k/v):
    Llama-style: model.embed_tokens, model.layers.{i}.{input_layernorm, self_attn.{q,k,v,o}_proj,
                 self_attn.{q,k}_norm, post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm,
                 lm_head | score
    GPT-2:       transformer.{wte, wpe, h.{i}.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
                 mlp.c_proj}, ln_f}, lm_head | score
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding
from safetensors import safe_open

from jaxalign.errors import CheckpointError
from jaxalign.models.config import ARCHITECTURES, ModelConfig
from jaxalign.models.heads import ScalarHeadModel
from jaxalign.models.transformer import Transformer, init_params, param_logical_axes
from jaxalign.sharding import LOGICAL_AXIS_RULES, logical_to_shardings

log = logging.getLogger(__name__)

HEADS = ("lm", "score")
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "consolidated.00.pth")

# Per-layer mapping: our path inside a block -> (HF name inside the layer, kind).
# kind: "same" (copy + reshape), "linear" ([out, in] -> transpose), "conv1d" ([in, out] as is),
# ("split", j) = j-th third of the last axis of a fused [.., 3·X] tensor (GPT-2 c_attn).
_LLAMA_LAYER = {
    ("attn_norm", "scale"): ("input_layernorm.weight", "same"),
    ("mlp_norm", "scale"): ("post_attention_layernorm.weight", "same"),
    ("attn", "q_norm", "scale"): ("self_attn.q_norm.weight", "same"),
    ("attn", "k_norm", "scale"): ("self_attn.k_norm.weight", "same"),
    **{("attn", f"{p}_proj", "kernel"): (f"self_attn.{p}_proj.weight", "linear") for p in "qkvo"},
    **{("attn", f"{p}_proj", "bias"): (f"self_attn.{p}_proj.bias", "same") for p in "qkvo"},
    **{("mlp", f"{p}_proj", "kernel"): (f"mlp.{p}_proj.weight", "linear") for p in ("gate", "up", "down")},
    **{("mlp", f"{p}_proj", "bias"): (f"mlp.{p}_proj.bias", "same") for p in ("gate", "up", "down")},
}
# Gemma 2 / 3: four norms per block; HF's post_attention_layernorm is the attention output's norm there.
_GEMMA2_LAYER = {
    **{k: v for k, v in _LLAMA_LAYER.items() if k != ("mlp_norm", "scale")},
    ("post_attn_norm", "scale"): ("post_attention_layernorm.weight", "same"),
    ("mlp_norm", "scale"): ("pre_feedforward_layernorm.weight", "same"),
    ("post_mlp_norm", "scale"): ("post_feedforward_layernorm.weight", "same"),
}
# Mixture of experts, as checkpoints store them: the router [E, D] and one [out, in] tensor per expert and
# projection ("{e}": the expert); ours are the router [D, E] and the experts stacked, [E, in, out].
_MIXTRAL_LAYER = {
    ("moe", "router"): ("block_sparse_moe.gate.weight", "linear"),
    ("moe", "gate_proj"): ("block_sparse_moe.experts.{e}.w1.weight", "experts"),
    ("moe", "up_proj"): ("block_sparse_moe.experts.{e}.w3.weight", "experts"),
    ("moe", "down_proj"): ("block_sparse_moe.experts.{e}.w2.weight", "experts"),
}
_QWEN_MOE_LAYER = {
    ("moe", "router"): ("mlp.gate.weight", "linear"),
    **{
        ("moe", f"{p}_proj"): (f"mlp.experts.{{e}}.{p}_proj.weight", "experts")
        for p in ("gate", "up", "down")
    },
}
_GPT2_LAYER = {
    ("attn_norm", "scale"): ("ln_1.weight", "same"),
    ("attn_norm", "bias"): ("ln_1.bias", "same"),
    ("mlp_norm", "scale"): ("ln_2.weight", "same"),
    ("mlp_norm", "bias"): ("ln_2.bias", "same"),
    **{("attn", f"{p}_proj", "kernel"): ("attn.c_attn.weight", ("split", j)) for j, p in enumerate("qkv")},
    **{("attn", f"{p}_proj", "bias"): ("attn.c_attn.bias", ("split", j)) for j, p in enumerate("qkv")},
    ("attn", "o_proj", "kernel"): ("attn.c_proj.weight", "conv1d"),
    ("attn", "o_proj", "bias"): ("attn.c_proj.bias", "same"),
    ("mlp", "up_proj", "kernel"): ("mlp.c_fc.weight", "conv1d"),
    ("mlp", "up_proj", "bias"): ("mlp.c_fc.bias", "same"),
    ("mlp", "down_proj", "kernel"): ("mlp.c_proj.weight", "conv1d"),
    ("mlp", "down_proj", "bias"): ("mlp.c_proj.bias", "same"),
}
_LLAMA_GLOBAL = {
    ("embed", "embedding"): ("embed_tokens.weight", "same"),
    ("final_norm", "scale"): ("norm.weight", "same"),
}
_GPT2_GLOBAL = {
    ("embed", "embedding"): ("wte.weight", "same"),
    ("pos_embed", "embedding"): ("wpe.weight", "same"),
    ("final_norm", "scale"): ("ln_f.weight", "same"),
    ("final_norm", "bias"): ("ln_f.bias", "same"),
}
# Heads live outside the backbone prefix.
_HEAD_TENSORS = {
    ("lm_head", "kernel"): ("lm_head.weight", "linear"),
    ("score", "kernel"): ("score.weight", "linear"),
}


def _backbone_prefix(config: ModelConfig) -> tuple[str, str]:
    """(backbone prefix, per-layer prefix template) in HF names."""
    if config.model_type == "gpt2":
        return "transformer.", "transformer.h.{i}."
    return "model.", "model.layers.{i}."


def _hf_name(config: ModelConfig, path: tuple[str, ...], layer: int | None) -> tuple[str, Any]:
    """Our parameter path (without the "transformer" wrapper of ScalarHeadModel) -> (HF name, kind)."""
    gpt2 = config.model_type == "gpt2"
    prefix, layer_prefix = _backbone_prefix(config)
    if path in _HEAD_TENSORS:
        return _HEAD_TENSORS[path]
    if layer is not None:
        table = _GPT2_LAYER if gpt2 else _GEMMA2_LAYER if config.sandwich_norms else _LLAMA_LAYER
        if path[0] == "moe":
            table = _MIXTRAL_LAYER if config.model_type == "mixtral" else _QWEN_MOE_LAYER
        name, kind = table[path]
        return layer_prefix.format(i=layer) + name, kind
    name, kind = (_GPT2_GLOBAL if gpt2 else _LLAMA_GLOBAL)[path]
    return prefix + name, kind


def _regroups(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    """Whether `src` reshapes to `dst` by only merging or splitting adjacent axes (as HF <-> ours does):
    same size, and one shape's running products are a subset of the other's."""
    if math.prod(src) != math.prod(dst):
        return False
    a, b = ({math.prod(s[:k]) for k in range(1, len(s) + 1)} for s in (src, dst))
    return a <= b or b <= a


def _to_ours(arr: np.ndarray, kind, shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor -> our layout; ValueError when its shape does not fit `shape`."""
    if kind == "linear":
        arr = arr.T
    elif kind == "experts":  # the experts' [out, in] tensors stacked: [E, out, in] -> [E, in, out]
        arr = arr.swapaxes(1, 2)
    elif isinstance(kind, tuple):  # ("split", j): j-th of 3 equal parts of the last axis
        if arr.shape[-1] % 3:
            raise ValueError("the last axis does not split into q, k, v")
        n = arr.shape[-1] // 3
        arr = arr[..., kind[1] * n : (kind[1] + 1) * n]
    if not _regroups(arr.shape, tuple(shape)):
        raise ValueError("")
    return arr.reshape(shape)


def _to_hf(arr: np.ndarray, kind, path: tuple[str, ...]) -> np.ndarray:
    """Inverse of _to_ours (before GPT-2's q/k/v parts are concatenated)."""
    if path[-1] == "bias":
        return arr.reshape(-1)
    if kind == "same":
        return arr
    if isinstance(kind, tuple) and kind[0] == "expert":  # expert e's [in, out] -> [out, in]
        return arr[kind[1]].T
    in_dims = 2 if path[-2] == "o_proj" else 1  # o_proj kernel is [H, Dh, D]
    flat = arr.reshape(math.prod(arr.shape[:in_dims]), -1)
    return flat.T if kind == "linear" else flat


def _hf_shape(shape: tuple[int, ...], kind, path: tuple[str, ...]) -> tuple[int, ...]:
    """The shape `_to_hf` gives an array of `shape` (without reading it)."""
    if path[-1] == "bias":
        return (math.prod(shape),)
    if kind == "same":
        return tuple(shape)
    if isinstance(kind, tuple) and kind[0] == "expert":
        return (shape[2], shape[1])
    in_dims = 2 if path[-2] == "o_proj" else 1
    flat = (math.prod(shape[:in_dims]), math.prod(shape[in_dims:]))
    return flat[::-1] if kind == "linear" else flat


# safetensors dtype names, in the order of safetensors' own Dtype enum (its writer sorts the data by
# descending dtype, then by name; `_SafetensorsWriter` lays files out the same way).
_ST_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "I16": np.dtype(np.int16),
    "U16": np.dtype(np.uint16),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype(np.int32),
    "U32": np.dtype(np.uint32),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "U64": np.dtype(np.uint64),
}
_ST_NAMES = {dt: name for name, dt in _ST_DTYPES.items()}
_ST_RANK = {name: i for i, name in enumerate(_ST_DTYPES)}


# --------------------------------------------------------------------------------------------- reading
class _SafetensorsReader:
    """Lazily opened safetensors file(s) of a HF directory (single file or sharded index)."""

    def __init__(self, path: Path):
        index = path / "model.safetensors.index.json"
        self._handles: dict[Path, Any] = {}
        self._headers: dict[Path, tuple[int, dict]] = {}
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no \"weight_map\" object (tensor name -> file)")
            self.files = {name: path / fname for name, fname in weight_map.items()}
            for file in sorted(set(self.files.values())):
                if not file.is_file():
                    raise CheckpointError(f"{file}: no such file (listed in {index.name})")
        elif (path / "model.safetensors").exists():
            f = self._open(path / "model.safetensors")
            self.files = {name: path / "model.safetensors" for name in f.keys()}
        else:
            pickled = [p for p in _PICKLE_FILES if (path / p).exists()]
            if pickled:
                raise CheckpointError(
                    f"{path} holds only pickled weights ({', '.join(pickled)}); jaxalign "
                    "reads safetensors only (pickle can run arbitrary code). Convert with "
                    "transformers: model.save_pretrained(dir, safe_serialization=True)."
                )
            raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")

    def _open(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(file, framework="numpy")
            except Exception as e:  # safetensors' SafetensorError (a truncated or corrupt file), OSError
                raise CheckpointError(
                    f"{file}: not a readable safetensors file ({_first_line(e)}); is it truncated or corrupt?"
                ) from e
        return self._handles[file]

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def _header(self, file: Path) -> tuple[int, dict]:
        """(offset of the data section, header JSON) of a file that safe_open has validated."""
        if file not in self._headers:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                self._headers[file] = (8 + n, json.loads(f.read(n)))
        return self._headers[file]

    def get(self, name: str) -> np.ndarray:
        """One tensor, read into a fresh array (a plain read: safe_open's arrays are views of a memory
        map, and every page they touch stays in the process's resident memory until the file is
        closed, i.e. the whole checkpoint by the end of loading)."""
        file = self.files[name]
        try:
            self._open(file)  # validates the header (and that the file holds all the bytes it lists)
            start, header = self._header(file)
            info = header[name]
            dtype = _ST_DTYPES.get(info["dtype"])
            if dtype is None:  # not in the table: safetensors' own (memory-mapped) read, copied
                return np.array(self._open(file).get_tensor(name))
            begin, end = info["data_offsets"]
            arr = np.empty(tuple(info["shape"]), dtype)
            if arr.nbytes != end - begin:
                raise ValueError(f"{end - begin} bytes for {info['dtype']}{info['shape']}")
            buf = arr.reshape(-1).view(np.uint8)
            with open(file, "rb", buffering=0) as f:
                f.seek(start + begin)
                done = 0
                while done < arr.nbytes:
                    got = f.readinto(buf[done:])
                    if not got:
                        raise ValueError(f"the file ends {arr.nbytes - done} bytes early")
                    done += got
            return arr
        except CheckpointError:
            raise
        except Exception as e:  # a header that promises more bytes than the file has, a missing tensor
            raise CheckpointError(
                f"{file}: cannot read tensor {name!r} ({_first_line(e)}); is the file truncated or corrupt?"
            ) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{file}: not UTF-8 text (byte {e.start}); expected JSON") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} line {e.lineno}: not valid JSON ({e.msg})") from e
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read it ({e.strerror or e})") from e


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: no such directory; expected a Hugging Face model directory "
            "(config.json + model.safetensors)"
        )
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(
            f"{path}: no config.json; expected a Hugging Face model directory "
            "(config.json + model.safetensors)"
        )
    hf = _read_json(cfg_file)
    if not isinstance(hf, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"{cfg_file}: model_type={model_type!r} (architectures="
            f"{hf.get('architectures')}) is not supported; supported model types: "
            f"{', '.join(ARCHITECTURES)}"
        )
    causal, seqcls = ARCHITECTURES[model_type]
    base = causal.replace("ForCausalLM", "Model").replace("LMHeadModel", "Model")
    for arch in hf.get("architectures") or ():
        if arch not in (causal, seqcls, base):
            raise CheckpointError(
                f"{cfg_file}: architecture {arch!r} is not supported; for model_type "
                f"{model_type!r} supported are {causal}, {seqcls}, {base}"
            )
    return hf


def _model_config(hf: dict[str, Any], cfg_file: Path, **overrides) -> ModelConfig:
    try:
        return ModelConfig.from_hf(hf, **overrides)
    except KeyError as e:
        raise CheckpointError(
            f"{cfg_file}: {e.args[0]!r} is missing (needed for model_type={hf.get('model_type')!r})"
        ) from e
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise CheckpointError(f"{cfg_file}: {_first_line(e)}") from e


def check_hf_dir(path: str | os.PathLike) -> dict[str, Any]:
    """Cheap checks of a HF model directory before anything is loaded: config.json (JSON, a supported
    model type, the fields the model needs) and every safetensors file's header. Raises CheckpointError
    naming what is wrong; returns config.json's contents. Tensor shapes are checked when loading."""
    path = Path(path)
    hf = _read_config(path)
    _model_config(hf, path / "config.json")
    reader = _SafetensorsReader(path)
    for file in sorted(set(reader.files.values())):
        reader._open(file)
    return hf


def is_reward_checkpoint(path: str | os.PathLike) -> bool | None:
    """Whether a local HF directory holds a scalar score head (a reward model / classifier): from
    config.json's `architectures`, else from a `score.weight` tensor. None when it cannot be told (no
    local directory, unreadable files: the loader names those problems)."""
    path = Path(os.path.expanduser(str(path)))
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    try:
        archs = json.loads(cfg.read_text()).get("architectures") or []
    except (ValueError, AttributeError, OSError):
        return None
    if archs:
        return any(
            a.endswith(("ForSequenceClassification", "ForTokenClassification", "RewardModel")) for a in archs
        )
    try:
        names = _SafetensorsReader(path).files
    except Exception:  # noqa: BLE001 - the loader reports unreadable weights itself
        return None
    return any(n == "score.weight" or n.endswith(".score.weight") for n in names)


def _put(arr: np.ndarray, sharding) -> jax.Array:
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])


def _set_layer(stacked: jax.Array, layer: jax.Array, i) -> jax.Array:
    """stacked[i] = layer; jitted with `stacked` donated, so it is updated in place."""
    return lax.dynamic_update_index_in_dim(stacked, layer.astype(stacked.dtype), i, 0)


def load_hf_model(
    path: str | os.PathLike,
    mesh: Mesh | None = None,
    dtype: str = "float32",
    param_dtype: str = "float32",
    head: str = "lm",
    rules=LOGICAL_AXIS_RULES,
    **config_overrides,
) -> tuple[ModelConfig, dict]:
    """Loads a HF model directory into (ModelConfig, params) laid out on `mesh`.

    Args:
      path: directory with config.json and model.safetensors (or model.safetensors.index.json).
      mesh: target mesh (jaxalign.sharding.make_mesh); None = the first local device.
      dtype / param_dtype: compute and storage dtypes ("float32" | "bfloat16").
      head: "lm" -> params for `Transformer`; "score" -> params for `ScalarHeadModel` (reward model /
        critic). A `*ForSequenceClassification` checkpoint's `score.weight` [1, D] becomes the scalar
        head; a causal-LM checkpoint gets a fresh N(0, initializer_range) score head (seed 0).
      rules: logical-axis rules table.
      config_overrides: other ModelConfig fields (remat, scan_layers, attention_impl, ...).
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r} must be one of {HEADS}")
    path = Path(path)
    hf = _read_config(path)
    reader = _SafetensorsReader(path)
    config = _model_config(hf, path / "config.json", dtype=dtype, param_dtype=param_dtype, **config_overrides)
    module = Transformer(config) if head == "lm" else ScalarHeadModel(config)
    try:
        shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0), module))
    except (ValueError, TypeError) as e:  # sizes that make no model (e.g. a head_dim of 0)
        raise CheckpointError(f"{path / 'config.json'}: its sizes make no model ({_first_line(e)})") from e
    if mesh is None:
        one = SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: one, shapes)
    else:
        shardings = logical_to_shardings(param_logical_axes(config, module), mesh, rules, shapes)

    prefix = _backbone_prefix(config)[0]
    has_prefix = any(n.startswith(prefix) for n in reader.files)

    def hf_array(ours: tuple[str, ...], layer: int | None, shape) -> np.ndarray:
        name, kind = _hf_name(config, ours, layer)
        if kind == "experts":  # one [out, in] tensor per expert, stacked
            names = [name.format(e=e) for e in range(shape[0])]
            missing = [n for n in names if n not in reader]
            if missing:
                raise CheckpointError(
                    f"{path}: tensor {missing[0]!r} (for parameter {'/'.join(ours)}) not found; experts stored "
                    "in another layout than one tensor per expert?"
                )
            arr = np.stack([reader.get(n) for n in names])
            try:
                return _to_ours(arr, kind, shape)
            except ValueError as e:
                raise CheckpointError(
                    f"{path}: {names[0]} ... have shape {tuple(arr.shape[1:])} each, but {'/'.join(ours)} needs "
                    f"{tuple(shape)}; weights of another size?"
                ) from e
        if not has_prefix and name.startswith(prefix):  # bare base model (e.g. saved LlamaModel)
            name = name[len(prefix) :]
        if name not in reader:
            if ours == ("score", "kernel"):
                log.warning(
                    "%s has no score.weight: initialising the scalar head N(0, %g)",
                    path,
                    config.initializer_range,
                )
                rng = np.random.default_rng(0)
                return (rng.standard_normal(shape) * config.initializer_range).astype(np.float32)
            raise CheckpointError(
                f"{path}: tensor {name!r} (for parameter {'/'.join(ours)}) not found; a "
                f"checkpoint of another model type than config.json's "
                f"{config.model_type!r}?"
            )
        arr = reader.get(name)
        try:
            return _to_ours(arr, kind, shape)
        except ValueError as e:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(arr.shape)}, but the model "
                f"its config.json describes has {'/'.join(ours)} of shape {tuple(shape)}"
                f"{f' ({e})' if str(e) else ''}; weights of another size?"
            ) from e

    np_dtype = jnp.dtype(param_dtype)
    flat_shapes = flax.traverse_util.flatten_dict(shapes)
    flat_shardings = flax.traverse_util.flatten_dict(shardings)
    out = {}
    for full_path, sds in flat_shapes.items():
        ours = full_path[1:] if head == "score" and full_path[0] == "transformer" else full_path
        sharding = flat_shardings[full_path]
        if ours[0] == "layers":  # scanned: the stacked array once on the mesh, written layer by layer
            layer_sharding = (
                sharding
                if isinstance(sharding, SingleDeviceSharding)
                else NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
            )
            stacked = jax.jit(functools.partial(jnp.zeros, sds.shape, np_dtype), out_shardings=sharding)()
            write = jax.jit(_set_layer, donate_argnums=0, out_shardings=sharding)
            for i in range(sds.shape[0]):
                layer = _put(
                    hf_array(ours[1:], i, sds.shape[1:]).astype(np_dtype, copy=False), layer_sharding
                )
                stacked = write(stacked, layer, np.int32(i))
                del layer
            out[full_path] = stacked
            del stacked
        elif re.fullmatch(r"layers_\d+", ours[0]):
            layer = int(ours[0].split("_")[1])
            out[full_path] = _put(hf_array(ours[1:], layer, sds.shape).astype(np_dtype, copy=False), sharding)
        else:
            out[full_path] = _put(hf_array(ours, None, sds.shape).astype(np_dtype, copy=False), sharding)
    return config, flax.traverse_util.unflatten_dict(out)


# --------------------------------------------------------------------------------------------- writing
@dataclass
class _Tensor:
    """One HF tensor of an export: name, shape and dtype, and the parameter slices it is made of, each
    (flat parameter path, index into a scanned leading axis or None, our path, kind); three parts for
    GPT-2's fused c_attn, joined along the last axis."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    parts: list[tuple]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _export_plan(config: ModelConfig, params: dict, head: str) -> list[_Tensor]:
    """The HF tensors of an export in the order they are written, from the parameters' shapes and dtypes
    alone (nothing is read)."""
    plan: list[_Tensor] = []
    pending: dict[str, dict[int, tuple]] = {}
    for full_path, value in flax.traverse_util.flatten_dict(params).items():
        ours = full_path[1:] if head == "score" and full_path[0] == "transformer" else full_path
        if head == "lm" and ours[0] == "score":
            continue
        shape, dtype = tuple(value.shape), np.dtype(value.dtype)
        if ours[0] == "layers":
            items = [(ours[1:], i, i, shape[1:]) for i in range(shape[0])]
        elif re.fullmatch(r"layers_\d+", ours[0]):
            items = [(ours[1:], int(ours[0].split("_")[1]), None, shape)]
        else:
            items = [(ours, None, None, shape)]
        for rel, layer, index, part_shape in items:
            name, kind = _hf_name(config, rel, layer)
            if name == "lm_head.weight" and head == "score":
                continue
            if kind == "experts":  # one tensor per expert
                for e in range(part_shape[0]):
                    k = ("expert", e)
                    plan.append(
                        _Tensor(
                            name.format(e=e),
                            _hf_shape(part_shape, k, rel),
                            dtype,
                            [(full_path, index, rel, k)],
                        )
                    )
                continue
            part = ((full_path, index, rel, kind), _hf_shape(part_shape, kind, rel), dtype)
            if isinstance(kind, tuple):  # one third of a fused tensor: complete once all three are seen
                parts = pending.setdefault(name, {})
                parts[kind[1]] = part
                if len(parts) == 3:
                    ps = [parts[j] for j in range(3)]
                    joined = ps[0][1][:-1] + (sum(p[1][-1] for p in ps),)
                    plan.append(
                        _Tensor(name, joined, np.result_type(*(p[2] for p in ps)), [p[0] for p in ps])
                    )
                    del pending[name]
            else:
                plan.append(_Tensor(name, part[1], dtype, [part[0]]))
    return plan


def _shard_files(plan: list[_Tensor], max_shard_bytes: int) -> list[list[_Tensor]]:
    """Consecutive runs of tensors, a new file whenever the next tensor would pass `max_shard_bytes`."""
    files: list[list[_Tensor]] = [[]]
    size = 0
    for t in plan:
        if size and size + t.nbytes > max_shard_bytes:
            files.append([])
            size = 0
        files[-1].append(t)
        size += t.nbytes
    return files


@jax.jit
def _take_layer(x: jax.Array, i) -> jax.Array:
    return lax.dynamic_index_in_dim(x, i, 0, keepdims=False)


def _host_part(x, index: int | None, keep: bool) -> np.ndarray | None:
    """A parameter, or layer `index` of a scanned one, in host memory; None where this process does not
    keep it. Every process calls this for every part in the same order: a multi-host array that is not
    replicated is gathered with a collective (`process_allgather`), which all processes join."""
    if not isinstance(x, jax.Array):
        return None if not keep else (np.asarray(x) if index is None else np.asarray(x)[index])
    if index is not None:
        x = _take_layer(x, np.int32(index))  # on every process: the same jitted computations everywhere
    if not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        arr = np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return arr if keep else None
    if not keep:
        return None
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(x.addressable_data(0))  # replicated over several processes: the local copy


def _export_tensor(flat: dict, t: _Tensor, keep: bool) -> np.ndarray | None:
    """HF tensor `t` in host memory (None where not kept; the collectives run either way)."""
    arrays = []
    for key, index, rel, kind in t.parts:
        a = _host_part(flat[key], index, keep)
        if a is not None:
            arrays.append(_to_hf(a, kind, rel))
        del a
    if not keep:
        return None
    arr = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=-1)
    if arr.shape != t.shape or arr.dtype != t.dtype:  # the plan and the data disagree: a bug here
        raise AssertionError(f"{t.name}: planned {t.dtype}{list(t.shape)}, got {arr.dtype}{list(arr.shape)}")
    return arr


class _SafetensorsWriter:
    """One safetensors file, written tensor by tensor in any order, each straight to its place, under
    `<name>.partial` until the last one is in. The layout is safetensors' own (data sorted by descending
    dtype, then by name; compact header JSON padded with spaces to 8 bytes), so the file is byte for
    byte what `safetensors.numpy.save_file(tensors, file, metadata={"format": "pt"})` writes."""

    def __init__(self, file: Path, tensors: list[_Tensor]):
        for t in tensors:
            if t.dtype not in _ST_NAMES:
                raise ValueError(f"{t.name}: dtype {t.dtype} has no safetensors name")
        self.file, self.tmp = file, file.with_name(file.name + ".partial")
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        self.offsets: dict[str, int] = {}
        pos = 0
        for t in sorted(tensors, key=lambda t: (-_ST_RANK[_ST_NAMES[t.dtype]], t.name)):
            header[t.name] = {
                "dtype": _ST_NAMES[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [pos, pos + t.nbytes],
            }
            self.offsets[t.name] = pos
            pos += t.nbytes
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        raw += b" " * (-len(raw) % 8)
        self.data_start, self.size = 8 + len(raw), 8 + len(raw) + pos
        self.left = set(self.offsets)
        self.f = open(self.tmp, "wb")  # noqa: SIM115 (closed by close() or abort())
        self.f.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, arr: np.ndarray) -> None:
        self.f.seek(self.data_start + self.offsets[name])
        self.f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
        self.left.remove(name)

    def close(self) -> None:
        if self.left:
            raise AssertionError(f"{self.file}: tensors never written: {sorted(self.left)}")
        self.f.truncate(self.size)
        self.f.close()
        os.replace(self.tmp, self.file)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def save_hf_model(
    path: str | os.PathLike,
    config: ModelConfig,
    params: dict,
    tokenizer=None,
    head: str = "lm",
    max_shard_bytes: int = 4 << 30,
) -> None:
    """Writes a transformers-loadable directory: config.json, generation_config.json,
    model.safetensors (or -0000i-of-0000n shards + index) and tokenizer files if `tokenizer` is given.

    head="lm": `*ForCausalLM`; head="score": `*ForSequenceClassification` with num_labels=1 and
    pad_token_id set (needed by transformers to find each row's last real token).
    `max_shard_bytes` bounds each safetensors file (a larger single tensor gets a file of its own).
    All processes must call this (multi-host gathers, in the same order everywhere). The tensors are
    streamed: a host holds about one HF tensor at a time, never the model. With several processes file i
    is written by process i % process_count (so `path` must be a directory every process sees) and
    process 0 writes the index, the configs and the tokenizer; every file is complete when this returns.
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r} must be one of {HEADS}")
    path = Path(path)
    files = _shard_files(_export_plan(config, params, head), max_shard_bytes)
    names = (
        ["model.safetensors"]
        if len(files) == 1
        else [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))]
    )
    me, count = jax.process_index(), jax.process_count()
    if me == 0 or len(files) > me:
        path.mkdir(parents=True, exist_ok=True)
    flat = flax.traverse_util.flatten_dict(params)
    for i, tensors in enumerate(files):  # the same order on every process (collective gathers)
        writer = _SafetensorsWriter(path / names[i], tensors) if i % count == me else None
        try:
            for t in tensors:
                arr = _export_tensor(flat, t, keep=writer is not None)
                if writer is not None:
                    writer.write(t.name, arr)
                del arr
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
            log.info("process %d wrote %s", me, path / names[i])
    if me == 0:
        _write_metadata(path, config, files, names, tokenizer, head)
    if count > 1:  # every process's files are complete when any process returns
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxalign.checkpoints.save_hf_model")


def _write_metadata(path: Path, config: ModelConfig, files, names, tokenizer, head: str) -> None:
    """The index (for several files), config.json, generation_config.json and the tokenizer."""
    if len(files) > 1:
        weight_map = {t.name: fname for tensors, fname in zip(files, names) for t in tensors}
        total = sum(t.nbytes for tensors in files for t in tensors)
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    hf_config = config.to_hf(head)
    if (
        tokenizer is not None
        and head == "score"
        and config.pad_token_id is None
        and tokenizer.pad_token_id is not None
    ):
        hf_config["pad_token_id"] = tokenizer.pad_token_id
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    gen = {
        k: hf_config[k]
        for k in ("bos_token_id", "eos_token_id", "pad_token_id")
        if hf_config.get(k) is not None
    }
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
