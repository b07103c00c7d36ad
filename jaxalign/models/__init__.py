"""Flax (linen) decoders matching transformers' Llama / Mistral / Qwen2 / Qwen3 / Gemma / GPT-2."""

from jaxalign.models.attention import attention_reference, cache_mask, segment_mask
from jaxalign.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from jaxalign.models.heads import ScalarHeadModel, last_token_scores
from jaxalign.models.transformer import (
    Transformer,
    init_cache,
    init_params,
    param_logical_axes,
    stack_layers,
    unstack_layers,
)

__all__ = [
    "ModelConfig",
    "SUPPORTED_MODEL_TYPES",
    "Transformer",
    "ScalarHeadModel",
    "last_token_scores",
    "init_cache",
    "init_params",
    "param_logical_axes",
    "attention_reference",
    "segment_mask",
    "cache_mask",
    "stack_layers",
    "unstack_layers",
]
