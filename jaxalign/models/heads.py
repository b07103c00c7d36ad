"""Scalar heads on the decoder: reward models and PPO value functions.

`ScalarHeadModel` = Transformer backbone (no LM head) + `score` projection D -> 1 on every token, the
layout of transformers' `*ForSequenceClassification` with num_labels=1. Parameters:
    {"transformer": <Transformer params without lm_head>, "score": {"kernel": [D, 1]}}
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.config import ModelConfig
from jaxalign.models.transformer import Transformer


class ScalarHead(nn.Module):
    """hidden [B, T, D] -> scores [B, T] float32 (no bias, like HF's `score` Linear)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        cfg = self.config
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), ("embed", None)),
            (cfg.hidden_size, 1),
            jnp.dtype(cfg.param_dtype),
        )
        b, t, d = hidden.shape
        scores = jnp.dot(
            hidden.reshape(b * t, d).astype(cfg.dtype),
            kernel.astype(cfg.dtype),
            preferred_element_type=jnp.float32,
        )
        return scores.reshape(b, t)


class ScalarHeadModel(nn.Module):
    """Reward model / critic: scores [B, T] float32 for every token (same inputs as Transformer).

    With `cache=...` returns (scores, new_cache).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids, positions, segment_ids, cache=None):
        out = Transformer(self.config, name="transformer")(
            input_ids, positions, segment_ids, cache=cache, hidden_only=True
        )
        hidden, new_cache = out if cache is not None else (out, None)
        scores = ScalarHead(self.config, name="score")(hidden)
        return scores if cache is None else (scores, new_cache)


def last_token_scores(scores: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """scores [B, T], segment_ids [B, T] -> [B]: the score at each row's last non-pad token.

    Works for left and right padding (rightmost position with segment id != 0); a row with no real
    token returns scores[:, 0]. For packed rows this is the last document's last token.
    """
    t = scores.shape[1]
    last = jnp.argmax(jnp.where(segment_ids != 0, jnp.arange(t), -1), axis=1)  # [B]
    return jnp.take_along_axis(scores, last[:, None], axis=1)[:, 0]
