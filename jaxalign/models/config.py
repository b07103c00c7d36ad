"""ModelConfig: one frozen description of a decoder-only transformer, with HF config conversion.

One config covers the Llama family (Llama 2/3, Mistral, Qwen2/2.5, Qwen3), Gemma (v1) and GPT-2: the
families differ only in a handful of switches (norm kind, MLP gating, biases, q/k norm, position
encoding, tied embeddings). `ModelConfig.from_hf(config_dict)` reads a transformers `config.json`
(v4 `rope_theta`/`rope_scaling` or v5 `rope_parameters`) and `to_hf()` writes one back.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

# model_type -> (CausalLM architecture, SequenceClassification architecture).
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "LlamaForSequenceClassification"),
    "mistral": ("MistralForCausalLM", "MistralForSequenceClassification"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3ForSequenceClassification"),
    "gemma": ("GemmaForCausalLM", "GemmaForSequenceClassification"),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2ForSequenceClassification"),
    "gemma3_text": ("Gemma3ForCausalLM", "Gemma3TextForSequenceClassification"),
    "gpt2": ("GPT2LMHeadModel", "GPT2ForSequenceClassification"),
    "mixtral": ("MixtralForCausalLM", "MixtralForSequenceClassification"),
    "qwen3_moe": ("Qwen3MoeForCausalLM", "Qwen3MoeForSequenceClassification"),
}
SUPPORTED_MODEL_TYPES = tuple(ARCHITECTURES)
_ROPE_TYPES = ("default", "linear", "llama3")
_ACTIVATIONS = ("silu", "gelu_new", "gelu_pytorch_tanh", "gelu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture + numerics of a decoder. Sizes are counts; `head_dim` is per head.

    Hashable (frozen, scalar fields only) so it can sit on a linen Module.
    """

    model_type: str = "llama"  # one of SUPPORTED_MODEL_TYPES (used for HF export names)
    vocab_size: int = 32000
    hidden_size: int = 4096  # D
    num_layers: int = 32  # L
    num_heads: int = 32  # H (query heads)
    num_kv_heads: int = 32  # K (GQA: H % K == 0)
    head_dim: int = 128  # Dh (may differ from D / H, e.g. Qwen3, Gemma)
    intermediate_size: int = 11008  # F (MLP width)
    max_position_embeddings: int = 4096
    # Block structure.
    norm: str = "rms"  # "rms" (RMSNorm) | "layer" (LayerNorm with bias, GPT-2)
    norm_eps: float = 1e-6
    norm_scale_offset: float = 0.0  # Gemma stores RMSNorm weight w and scales by (1 + w)
    activation: str = "silu"  # silu | gelu_new (tanh approx.) | gelu_pytorch_tanh | gelu
    gated_mlp: bool = True  # SwiGLU-style down(act(gate(x)) * up(x)) vs down(act(up(x)))
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2, GPT-2)
    out_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False  # biases on MLP projections (GPT-2)
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3)
    embed_scale: bool = False  # multiply token embeddings by sqrt(D) (Gemma)
    tie_word_embeddings: bool = False  # LM head = embedding matrix transposed
    # Positions.
    position_embedding: str = "rope"  # "rope" | "learned" (GPT-2 absolute positions)
    rope_theta: float = 10000.0
    rope_type: str = "default"  # "default" | "linear" | "llama3"
    rope_factor: float = 1.0  # linear / llama3 scaling factor
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_position_embeddings: int = 8192  # llama3 only
    sliding_window: int | None = None  # Mistral: a query sees keys with q - k < window
    # Per-layer attention ("sliding_attention" | "full_attention"; Gemma 2 / 3): sliding layers use
    # `sliding_window`, full layers see everything; None = every layer uses `sliding_window`.
    layer_types: tuple[str, ...] | None = None
    rope_local_theta: float = 0.0  # Gemma 3: RoPE base of the sliding layers (0 = rope_theta)
    # Gemma 2 / 3.
    sandwich_norms: bool = False  # norms after attention and after the MLP too (4 per block)
    query_pre_attn_scalar: float = 0.0  # attention scale = this ** -0.5 (0: head_dim ** -0.5)
    attn_logit_softcap: float = 0.0  # attention logits -> cap · tanh(logits / cap); 0 = off
    final_logit_softcap: float = 0.0  # LM logits -> cap · tanh(logits / cap); 0 = off
    # Mixture of experts (Mixtral, Qwen3-MoE): every block's MLP is `num_experts` experts, top-k routed.
    num_experts: int = 0  # E; 0 = a dense MLP
    num_experts_per_tok: int = 2  # k
    moe_intermediate_size: int = 0  # each expert's F (0 = intermediate_size)
    norm_topk_prob: bool = True  # renormalise the k routing weights to sum 1 (Mixtral; Qwen3-MoE's flag)
    router_aux_loss_coef: float = 0.0  # weight of the load-balancing loss in every objective's gradient
    router_z_loss_coef: float = 0.0  # weight of the router z-loss
    # Special tokens (export only; the model itself does not use them).
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # Numerics and memory.
    dtype: str = "float32"  # compute dtype: "float32" | "bfloat16"
    param_dtype: str = "float32"  # storage dtype of parameters
    remat: bool = False  # nn.remat each block (recompute activations in backward)
    remat_policy: str = "nothing_saveable"  # a jax.checkpoint_policies name, e.g. "dots_saveable"
    scan_layers: bool = False  # nn.scan over blocks; params get a leading "layers" axis
    attention_impl: str | None = None  # None: cuDNN flash on GPU (bf16/fp16), causal chunks on CPU, else
    # XLA; "xla" | "cudnn" | "chunked" | "reference" | "splash" (TPU Pallas) | "triton" (GPU Pallas)
    # force one; "reference": the plain einsum version (tests).
    logits_chunk: int = 0  # log-probs through the LM head: 0 = auto (in chunks of positions,
    # never the whole [B, T, V] logits, when vocab_size >= 32768);
    # -1 = whole logits; N = chunks of N positions
    initializer_range: float = 0.02  # std of the normal init for random parameters

    def __post_init__(self):
        if self.model_type not in ARCHITECTURES:
            raise ValueError(
                f"model_type={self.model_type!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm={self.norm!r} must be 'rms' or 'layer'")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} must be one of {_ACTIVATIONS}")
        if self.position_embedding not in ("rope", "learned"):
            raise ValueError(f"position_embedding={self.position_embedding!r} must be rope|learned")
        if self.rope_type not in _ROPE_TYPES:
            raise ValueError(f"rope_type={self.rope_type!r} must be one of {_ROPE_TYPES}")
        if self.dtype not in ("float32", "bfloat16") or self.param_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"dtype/param_dtype must be float32 or bfloat16, got {self.dtype!r}/{self.param_dtype!r}"
            )
        if not hasattr(jax.checkpoint_policies, self.remat_policy):
            raise ValueError(f"remat_policy={self.remat_policy!r} is not a jax.checkpoint_policies name")
        if self.logits_chunk < -1:
            raise ValueError(f"logits_chunk={self.logits_chunk} must be -1 (whole), 0 (auto) or > 0")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers:
                raise ValueError(
                    f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers"
                )
            bad = set(self.layer_types) - {"sliding_attention", "full_attention"}
            if bad:
                raise ValueError(
                    f"layer_types {sorted(bad)} not supported (sliding_attention | full_attention)"
                )
            if self.scan_layers and len(set(self.layer_types)) > 1:
                raise ValueError("scan_layers with mixed sliding / full attention layers is not supported")
        if self.attention_impl not in (None, "xla", "cudnn", "chunked", "reference", "splash", "triton"):
            raise ValueError(
                f"attention_impl={self.attention_impl!r} must be None|xla|cudnn|chunked|reference|splash|triton"
            )
        if self.attention_impl in ("splash", "triton"):
            from jaxalign.models.kernels import unsupported

            windows = {self.layer_window(i) for i in range(self.num_layers)} - {None}
            why = unsupported(self.attention_impl, next(iter(windows), None), self.attn_logit_softcap)
            if why:
                raise ValueError(f"attention_impl={self.attention_impl!r}: {why}; choose 'auto' or 'splash'")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    def layer_window(self, i: int) -> int | None:
        """Layer i's sliding window (None: it sees every earlier key)."""
        if self.layer_types is not None and self.layer_types[i] == "full_attention":
            return None
        return self.sliding_window

    def layer_rope_theta(self, i: int) -> float:
        """Layer i's RoPE base (Gemma 3's sliding layers have their own)."""
        if self.rope_local_theta and self.layer_window(i) is not None:
            return self.rope_local_theta
        return self.rope_theta

    # ------------------------------------------------------------------ HF conversion
    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "ModelConfig":
        """Builds a config from a transformers config dict (`config.json` contents).

        `overrides` set non-architecture fields (dtype, param_dtype, remat, scan_layers, ...).
        Raises ValueError for unsupported model types or features.
        """
        hf = dict(hf)
        model_type = hf.get("model_type")
        if model_type not in ARCHITECTURES:
            raise ValueError(
                f"HF model_type={model_type!r} (architectures={hf.get('architectures')}) "
                f"is not supported; supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        eos = hf.get("eos_token_id")
        common = dict(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            bos_token_id=hf.get("bos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            initializer_range=hf.get("initializer_range", 0.02),
        )
        if model_type == "gpt2":
            for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
                if hf.get(key):
                    raise ValueError(f"GPT-2 option {key}=True is not supported")
            if not hf.get("scale_attn_weights", True):
                raise ValueError("GPT-2 option scale_attn_weights=False is not supported")
            d, h = hf["n_embd"], hf["n_head"]
            act = hf.get("activation_function", "gelu_new")
            fields = dict(
                hidden_size=d,
                num_layers=hf["n_layer"],
                num_heads=h,
                num_kv_heads=h,
                head_dim=d // h,
                intermediate_size=hf.get("n_inner") or 4 * d,
                max_position_embeddings=hf["n_positions"],
                norm="layer",
                norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                activation=act,
                gated_mlp=False,
                qkv_bias=True,
                out_bias=True,
                mlp_bias=True,
                tie_word_embeddings=hf.get("tie_word_embeddings", True),
                position_embedding="learned",
            )
        else:
            d, h = hf["hidden_size"], hf["num_attention_heads"]
            act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
            gemma = model_type in ("gemma", "gemma2", "gemma3_text")
            if gemma and act == "gelu":  # HF Gemma maps legacy "gelu" to the tanh approx.
                act = "gelu_pytorch_tanh"
            attention_bias = bool(hf.get("attention_bias", False))
            fields = dict(
                hidden_size=d,
                num_layers=hf["num_hidden_layers"],
                num_heads=h,
                num_kv_heads=hf.get("num_key_value_heads") or h,
                head_dim=hf.get("head_dim") or d // h,
                intermediate_size=hf["intermediate_size"],
                max_position_embeddings=hf.get("max_position_embeddings", 4096),
                norm_eps=hf.get("rms_norm_eps", 1e-6),
                activation=act,
                qkv_bias=attention_bias or model_type == "qwen2",
                out_bias=attention_bias and model_type != "qwen2",
                mlp_bias=bool(hf.get("mlp_bias", False)),
                qk_norm=model_type in ("qwen3", "gemma3_text"),
                norm_scale_offset=1.0 if gemma else 0.0,
                embed_scale=gemma,
                tie_word_embeddings=hf.get("tie_word_embeddings", gemma),
                **_rope_from_hf(hf),
            )
            if model_type in ("mistral", "mixtral"):
                fields["sliding_window"] = hf.get("sliding_window")
            if model_type in ("mixtral", "qwen3_moe"):
                if model_type == "qwen3_moe" and (
                    hf.get("mlp_only_layers") or int(hf.get("decoder_sparse_step", 1)) != 1
                ):
                    raise ValueError(
                        "qwen3_moe with dense layers (mlp_only_layers, decoder_sparse_step) is not supported"
                    )
                fields.update(
                    num_experts=int(hf.get("num_local_experts") or hf.get("num_experts")),
                    num_experts_per_tok=int(hf["num_experts_per_tok"]),
                    moe_intermediate_size=int(hf.get("moe_intermediate_size") or 0),
                    norm_topk_prob=bool(hf.get("norm_topk_prob", True))
                    if model_type == "qwen3_moe"
                    else True,
                    qk_norm=model_type == "qwen3_moe",
                    router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
                )
            if model_type in ("gemma2", "gemma3_text"):
                if hf.get("use_bidirectional_attention"):
                    raise ValueError("use_bidirectional_attention=True is not supported")
                n = fields["num_layers"]
                types = hf.get("layer_types")
                if not types:  # older configs: Gemma 2 alternates, Gemma 3 has every `pattern`-th layer full
                    pattern = 2 if model_type == "gemma2" else int(hf.get("sliding_window_pattern", 6))
                    types = [
                        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)
                    ]
                fields.update(
                    sliding_window=hf.get("sliding_window"),
                    layer_types=tuple(types),
                    sandwich_norms=True,
                    query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or 0.0),
                    attn_logit_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
                    final_logit_softcap=float(hf.get("final_logit_softcapping") or 0.0),
                )
                if model_type == "gemma3_text":
                    fields.update(_gemma3_rope(hf))
            elif model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
                raise ValueError(f"{model_type} use_sliding_window=True is not supported")
            if hf.get("pretraining_tp", 1) != 1:
                raise ValueError("pretraining_tp != 1 is not supported")
            if hf.get("partial_rotary_factor", 1.0) != 1.0:
                raise ValueError("partial_rotary_factor != 1 is not supported")
        return cls(**{**common, **fields, **overrides})

    def to_hf(self, head: str = "lm") -> dict[str, Any]:
        """transformers config dict for this model; head="score" gives a 1-label classifier config."""
        causal, seqcls = ARCHITECTURES[self.model_type]
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        out: dict[str, Any] = dict(
            model_type=self.model_type,
            architectures=[seqcls if head == "score" else causal],
            vocab_size=self.vocab_size,
            bos_token_id=self.bos_token_id,
            eos_token_id=eos,
            pad_token_id=self.pad_token_id,
            tie_word_embeddings=self.tie_word_embeddings,
            initializer_range=self.initializer_range,
            dtype=self.param_dtype,
            use_cache=True,
        )
        if self.model_type == "gpt2":
            out.update(
                n_embd=self.hidden_size,
                n_layer=self.num_layers,
                n_head=self.num_heads,
                n_inner=self.intermediate_size,
                n_positions=self.max_position_embeddings,
                n_ctx=self.max_position_embeddings,
                layer_norm_epsilon=self.norm_eps,
                activation_function=self.activation,
                scale_attn_weights=True,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
            )
        else:
            rope: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
            if self.rope_type in ("linear", "llama3"):
                rope["factor"] = self.rope_factor
            if self.rope_type == "llama3":
                rope.update(
                    low_freq_factor=self.rope_low_freq_factor,
                    high_freq_factor=self.rope_high_freq_factor,
                    original_max_position_embeddings=self.rope_original_max_position_embeddings,
                )
            out.update(
                hidden_size=self.hidden_size,
                num_hidden_layers=self.num_layers,
                num_attention_heads=self.num_heads,
                num_key_value_heads=self.num_kv_heads,
                head_dim=self.head_dim,
                intermediate_size=self.intermediate_size,
                max_position_embeddings=self.max_position_embeddings,
                rms_norm_eps=self.norm_eps,
                hidden_act=self.activation,
                rope_parameters=rope,
                rope_theta=self.rope_theta,
                attention_dropout=0.0,
            )
            if self.model_type in ("gemma", "gemma2", "gemma3_text"):
                out["hidden_activation"] = self.activation
            if self.model_type in ("gemma2", "gemma3_text"):
                out.update(
                    sliding_window=self.sliding_window,
                    layer_types=list(self.layer_types or ()),
                    query_pre_attn_scalar=int(self.query_pre_attn_scalar or self.head_dim),
                    attn_logit_softcapping=self.attn_logit_softcap or None,
                    final_logit_softcapping=self.final_logit_softcap or None,
                    attention_bias=self.out_bias,
                )
            if self.model_type == "gemma3_text":
                local = {"rope_type": "default", "rope_theta": self.rope_local_theta or self.rope_theta}
                out["rope_parameters"] = {"sliding_attention": local, "full_attention": rope}
                out["rope_local_base_freq"] = local["rope_theta"]
                out.pop("rope_theta", None)
            if self.model_type in ("llama", "qwen3", "gemma", "qwen3_moe"):
                out["attention_bias"] = self.out_bias
            if self.model_type == "llama":
                out["mlp_bias"] = self.mlp_bias
            if self.model_type in ("mistral", "mixtral"):
                out["sliding_window"] = self.sliding_window
            if self.model_type in ("mixtral", "qwen3_moe"):
                out["router_aux_loss_coef"] = self.router_aux_loss_coef
            if self.model_type == "mixtral":
                out.update(num_local_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok)
            if self.model_type == "qwen3_moe":
                out.update(
                    num_experts=self.num_experts,
                    num_experts_per_tok=self.num_experts_per_tok,
                    moe_intermediate_size=self.expert_intermediate_size,
                    norm_topk_prob=self.norm_topk_prob,
                    decoder_sparse_step=1,
                    mlp_only_layers=[],
                    use_sliding_window=False,
                    sliding_window=None,
                )
            if self.model_type in ("qwen2", "qwen3"):
                out.update(use_sliding_window=False, sliding_window=None)
        if head == "score":
            out.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
            if out["pad_token_id"] is None:  # HF classifiers need it to find the last real token
                out["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
        return out

    # ------------------------------------------------------------------ derived values
    def rope_inv_freq(self) -> np.ndarray:
        """[Dh/2] float32 inverse frequencies, computed exactly as transformers does (in float32)."""
        dim = self.head_dim
        inv = 1.0 / (
            np.float32(self.rope_theta)
            ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim))
        )
        inv = inv.astype(np.float32)
        if self.rope_type == "linear":
            inv = inv / np.float32(self.rope_factor)
        elif self.rope_type == "llama3":
            factor, low, high = self.rope_factor, self.rope_low_freq_factor, self.rope_high_freq_factor
            old_len = self.rope_original_max_position_embeddings
            low_wavelen, high_wavelen = old_len / low, old_len / high
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
            smooth = (old_len / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            inv = np.where(is_medium, smoothed, scaled)
        return inv.astype(np.float32)


def _gemma3_rope(hf: dict[str, Any]) -> dict[str, Any]:
    """Gemma 3's two RoPE settings: the full layers' (v5 `rope_parameters["full_attention"]`, or v4
    `rope_theta` + `rope_scaling`) and the sliding layers' base (`["sliding_attention"]` or
    `rope_local_base_freq`, default scaling only)."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params:
        fields = _rope_from_hf({"rope_parameters": params["full_attention"]})
        local = params.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise ValueError(f"sliding layers' rope_type={local.get('rope_type')!r} is not supported")
        fields["rope_local_theta"] = float(local.get("rope_theta", hf.get("rope_local_base_freq", 10000.0)))
        return fields
    fields = _rope_from_hf(hf)
    fields["rope_local_theta"] = float(hf.get("rope_local_base_freq", 10000.0))
    return fields


def _rope_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """Reads v5 `rope_parameters` or v4 `rope_theta` + `rope_scaling` into ModelConfig fields."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if "full_attention" in params:  # per layer type (Gemma 3): the full layers' (see _gemma3_rope)
        params = dict(params["full_attention"])
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"rope_type={rope_type!r} is not supported; supported: {_ROPE_TYPES}")
    fields: dict[str, Any] = dict(rope_theta=float(theta), rope_type=rope_type)
    if rope_type in ("linear", "llama3"):
        fields["rope_factor"] = float(params["factor"])
    if rope_type == "llama3":
        fields.update(
            rope_low_freq_factor=float(params["low_freq_factor"]),
            rope_high_freq_factor=float(params["high_freq_factor"]),
            rope_original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    return fields
