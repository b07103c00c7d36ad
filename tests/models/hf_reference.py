"""Tiny random transformers models (torch, float32, eager attention) to compare jaxalign against.

`tiny_hf_model(family)` builds a seeded random model whose config exercises the family's features,
saves it with safetensors to a temporary directory (once per test session) and returns (dir, model).
Weights are re-drawn with a larger spread than HF's default init (std 0.02 makes every logit ~0, so
mismatches would hide).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import atexit

import jax
import numpy as np
import torch
import transformers

from jaxalign.checkpoints.hf import load_hf_model
from jaxalign.models import Transformer

TOL = 1e-4  # max abs logit difference in float32

_COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

FAMILIES = {
    # Llama 3: GQA, llama3 rope scaling (original context 16 so low/medium/high bands all occur).
    "llama3": (
        transformers.LlamaConfig,
        dict(
            _COMMON,
            tie_word_embeddings=False,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    # Llama 2 style MHA with tied embeddings and all biases on (attention_bias, mlp_bias).
    "llama2_tied_bias": (
        transformers.LlamaConfig,
        dict(_COMMON, num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    ),
    "mistral": (transformers.MistralConfig, dict(_COMMON, sliding_window=None, head_dim=16)),
    "mistral_window": (transformers.MistralConfig, dict(_COMMON, sliding_window=5, head_dim=16)),
    # Qwen2/2.5: q/k/v bias, tied (as the small Qwen2.5 models).
    "qwen2": (transformers.Qwen2Config, dict(_COMMON, tie_word_embeddings=True)),
    # Qwen3: per-head q/k RMSNorm, head_dim (32) != hidden / heads (16).
    "qwen3": (transformers.Qwen3Config, dict(_COMMON, head_dim=32, tie_word_embeddings=False)),
    "gemma": (transformers.GemmaConfig, dict(_COMMON, head_dim=16, hidden_activation="gelu_pytorch_tanh")),
    # Gemma 2: soft-capped attention and final logits, sliding / full layers alternating (window 5, shorter
    # than the test rows), sandwich norms, query_pre_attn_scalar != head_dim.
    "gemma2": (
        transformers.Gemma2Config,
        dict(
            _COMMON,
            num_hidden_layers=4,
            head_dim=16,
            sliding_window=5,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
    ),
    # Gemma 3 (text): q/k norms, a local RoPE base for the sliding layers, every 3rd layer full.
    "gemma3": (
        transformers.Gemma3TextConfig,
        dict(
            _COMMON,
            num_hidden_layers=4,
            head_dim=16,
            sliding_window=5,
            query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0},
            },
        ),
    ),
    # Mixtral: 4 experts, top-2 (renormalised), windowless; Qwen3-MoE: q/k norms, expert width != F, the top-k
    # weights not renormalised.
    "mixtral": (
        transformers.MixtralConfig,
        dict(_COMMON, num_local_experts=4, num_experts_per_tok=2, head_dim=16),
    ),
    "qwen3_moe": (
        transformers.Qwen3MoeConfig,
        dict(
            _COMMON,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            head_dim=16,
            norm_topk_prob=False,
            tie_word_embeddings=False,
        ),
    ),
    "gpt2": (
        transformers.GPT2Config,
        dict(
            vocab_size=128,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),
    ),
}

_TMP = tempfile.mkdtemp(prefix="jaxalign_hf_")
atexit.register(shutil.rmtree, _TMP, True)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
                p.copy_((0.0 if "gemma" in type(model).__name__.lower() else 1.0) + 0.1 * noise)
            else:
                p.copy_(0.15 * noise)


@functools.lru_cache(maxsize=None)
def tiny_hf_model(family: str, head: str = "lm"):
    """(directory, torch model in eval mode) for a family; head="score" gives *ForSequenceClassification."""
    config_cls, kwargs = FAMILIES[family]
    config = config_cls(**kwargs)
    if head == "score":
        config.num_labels = 1
        auto = transformers.AutoModelForSequenceClassification
    else:
        auto = transformers.AutoModelForCausalLM
    torch.manual_seed(0)
    model = auto.from_config(config, attn_implementation="eager", dtype=torch.float32)
    _randomize(model, seed=sum(map(ord, family + head)))
    model.eval()
    path = f"{_TMP}/{family}_{head}"
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    """Unpadded forward of one row: ids [T] -> logits [T, V] (or [T] scores handled by caller)."""
    with torch.no_grad():
        return model(torch.as_tensor(ids[None], dtype=torch.long)).logits[0].numpy()


def padded_batch(
    rows_spec=((12, "left"), (7, "left"), (9, "right"), (4, "right")),
    total: int = 12,
    vocab: int = 128,
    seed: int = 0,
):
    """Random rows padded to `total`, each on its own side: rows_spec = ((length, "left"|"right"), ...).

    Returns (rows: list of [len] int32, input_ids, positions, segment_ids [B, total] int32, slices).
    """
    rng = np.random.default_rng(seed)
    b = len(rows_spec)
    ids = np.zeros((b, total), np.int32)
    pos = np.zeros((b, total), np.int32)
    seg = np.zeros((b, total), np.int32)
    rows, slices = [], []
    for i, (n, side) in enumerate(rows_spec):
        r = rng.integers(3, vocab, size=n).astype(np.int32)
        sl = slice(total - n, total) if side == "left" else slice(0, n)
        ids[i, sl], pos[i, sl], seg[i, sl] = r, np.arange(n), 1
        rows.append(r)
        slices.append(sl)
    return rows, ids, pos, seg, slices


@functools.partial(jax.jit, static_argnums=0)
def jax_forward(config, params, ids, pos, seg):
    return Transformer(config).apply({"params": params}, ids, pos, seg)


def assert_matches_transformers(family: str, **overrides) -> float:
    """Loads the tiny HF model into jaxalign and checks padded-batch logits against per-row torch."""
    path, model = tiny_hf_model(family)
    config, params = load_hf_model(path, **overrides)
    rows, ids, pos, seg, slices = padded_batch(vocab=config.vocab_size)
    ours = np.asarray(jax_forward(config, params, ids, pos, seg))
    assert np.isfinite(ours).all()
    worst = 0.0
    for i, (row, sl) in enumerate(zip(rows, slices)):
        ref = torch_logits(model, row)
        worst = max(worst, float(np.abs(ours[i, sl] - ref).max()))
    assert worst <= TOL, f"{family}: max |logit diff| {worst:.2e} > {TOL}"
    return worst
