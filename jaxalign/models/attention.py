"""Attention: masks from segment ids / causality / KV cache, the attention op, and the layer.

Masking rule (INTERFACES.md): segment id 0 is padding; a token attends causally to earlier tokens with
the same non-zero segment id, so left/right padding and packing are one mechanism. With a KV cache of S
slots, a query written at slot `index + i` attends to slots `j <= index + i` whose `mask[j]` is set.
Query rows that see no key (padding) stay finite: masked logits are a large finite negative, so their
softmax is uniform instead of NaN; their outputs are garbage by design and are never read.
"""

from __future__ import annotations

import flax.linen as nn
import jax
from absl import logging
import jax.numpy as jnp

from jaxalign.models import kernels
from jaxalign.models.config import ModelConfig
from jaxalign.models.layers import Dense, RMSNorm, apply_rope

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # same finite "minus infinity" as jax.nn's xla path


def segment_mask(segment_ids: jax.Array, sliding_window: int | None = None) -> jax.Array:
    """segment_ids [B, T] int32 -> bool mask [B, 1, T, T]: causal, same non-zero segment."""
    t = segment_ids.shape[1]
    idx = jnp.arange(t)
    causal = idx[:, None] >= idx[None, :]  # [T, S]
    if sliding_window is not None:
        causal &= (idx[:, None] - idx[None, :]) < sliding_window
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, S]
    valid_key = (segment_ids != 0)[:, None, :]  # [B, 1, S]
    return (causal[None] & same & valid_key)[:, None]


def cache_mask(
    key_valid: jax.Array, index: jax.Array, num_queries: int, sliding_window: int | None = None
) -> jax.Array:
    """key_valid [B, S] bool, index int32 scalar -> bool mask [B, 1, T, S] for queries at index+i."""
    s = key_valid.shape[1]
    q_slot = index + jnp.arange(num_queries)  # [T]
    k_slot = jnp.arange(s)  # [S]
    allowed = k_slot[None, :] <= q_slot[:, None]  # [T, S]
    if sliding_window is not None:
        allowed &= (q_slot[:, None] - k_slot[None, :]) < sliding_window
    return (allowed[None] & key_valid[:, None, :])[:, None]


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """cap · tanh(x / cap) (Gemma 2's logit soft-capping); x itself when cap is 0."""
    return x if not cap else cap * jnp.tanh(x / cap)


def attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    scale: float,
    kv_heads_first: bool = False,
    logit_cap: float = 0.0,
) -> jax.Array:
    """Plain einsum attention (for tests, as a fallback, and over the KV cache).

    q [B, T, H, Dh], k/v [B, S, K, Dh] (H % K == 0), or [B, K, S, Dh] with `kv_heads_first` (the KV
    cache's own layout: decoding reads the whole cache every step, and taking it as stored saves two
    transposed copies of it, -20% per layer at [64, 192] slots on a 2-core CPU), mask [B, 1, T, S] bool
    -> [B, T, H, Dh]. Logits and softmax in float32.
    """
    b, t, h, dh = q.shape
    kh = k.shape[1 if kv_heads_first else 2]
    kv = "bksd" if kv_heads_first else "bskd"
    qg = q.reshape(b, t, kh, h // kh, dh)  # [B, T, K, G, Dh]
    logits = jnp.einsum(f"btkgd,{kv}->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask[:, :, None], softcap(logits, logit_cap), _NEG)  # [B, K, G, T, S]
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum(f"bkgts,{kv}->btkgd", probs, v)
    return out.reshape(b, t, h, dh)


# Query rows per chunk of `attention_causal_chunks` (measured on a 2-core CPU, [8, 512] and [16, 128] rows,
# 8 heads of 32: 64 was fastest, 1.6-1.8x the one-shot XLA attention forward and backward).
CAUSAL_CHUNK = 64


def attention_causal_chunks(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    scale: float,
    chunk: int = CAUSAL_CHUNK,
    logit_cap: float = 0.0,
) -> jax.Array:
    """Self-attention over a causal mask, one block of `chunk` queries at a time.

    Query block [s, e) can only see keys [0, e) under a causal mask, so each block attends to that prefix
    alone: about half the logits of the one-shot [T, T] product are never computed, and each block's
    logits and softmax are small enough to stay in cache (on CPU the one-shot version is bound by memory
    traffic over [B, H, T, T]). Exactly the reference attention otherwise (same masked softmax per row).

    q [B, T, H, Dh], k/v [B, T, K, Dh], mask [B, 1, T, T] bool and causal (query slot i sees only keys
    j <= i) -> [B, T, H, Dh].
    """
    t = q.shape[1]
    outs = []
    for s in range(0, t, chunk):
        e = min(s + chunk, t)
        outs.append(
            attention_reference(
                q[:, s:e], k[:, :e], v[:, :e], mask[:, :, s:e, :e], scale, logit_cap=logit_cap
            )
        )
    return jnp.concatenate(outs, axis=1)


def attend(
    q,
    k,
    v,
    mask,
    scale: float,
    implementation: str | None,
    causal_self: bool = False,
    logit_cap: float = 0.0,
    segment_ids=None,
    sliding_window=None,
) -> jax.Array:
    """Dispatches to `jax.nn.dot_product_attention`, the causal-chunked attention or the reference.

    implementation=None: cuDNN flash attention when running on GPU in bf16/fp16 and cuDNN accepts the
    shapes (checked while tracing; otherwise XLA); on CPU, for self-attention under a causal mask
    (`causal_self`: no KV cache) longer than one chunk, `attention_causal_chunks`; XLA elsewhere.
    Soft-capped logits (`logit_cap`, Gemma 2), which `jax.nn.dot_product_attention` cannot take, run the
    chunked or the reference einsum attention (XLA all the same).
    """
    if implementation in kernels.KERNELS:  # Pallas kernels over segment ids (self-attention only)
        if not causal_self or segment_ids is None:
            raise ValueError(
                f"attention_impl={implementation!r} runs self-attention over segment ids (no KV cache)"
            )
        if implementation == "triton":
            return kernels.triton_attention(q, k, v, segment_ids, scale)
        return kernels.splash_attention(q, k, v, segment_ids, scale, sliding_window, logit_cap)
    if implementation == "reference" or (logit_cap and not (causal_self and q.shape[1] > CAUSAL_CHUNK)):
        return attention_reference(q, k, v, mask, scale, logit_cap=logit_cap)
    if logit_cap:
        return attention_causal_chunks(q, k, v, mask, scale, logit_cap=logit_cap)
    if implementation == "chunked" or (
        implementation is None
        and causal_self
        and jax.default_backend() == "cpu"
        and q.shape[1] > CAUSAL_CHUNK
    ):
        if not causal_self:
            raise ValueError(
                "attention_impl='chunked' needs self-attention under a causal mask (no KV cache)"
            )
        return attention_causal_chunks(q, k, v, mask, scale)
    if implementation is None and jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
        except Exception as e:  # unsupported head_dim / GPU / cuDNN version: XLA, and say so (once per shape)
            logging.warning(
                "cuDNN attention cannot run q %s, k %s (%s: %s); using XLA's attention",
                q.shape,
                k.shape,
                type(e).__name__,
                str(e).strip().splitlines()[0] if str(e).strip() else "",
            )
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, implementation=implementation or "xla"
    )


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention with RoPE or none (learned positions), optional cache.

    __call__(x [N, D], mask [B, 1, T, S] bool, rope (cos, sin) or None, cache {"k","v"} or None,
    index int32 scalar, segment_ids [B, T] and the layer's sliding window (for the Pallas kernels, which
    take segment ids instead of the mask)) -> (out [N, D], new cache or None).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x, mask, rope, cache=None, index=None, segment_ids=None, window=None):
        cfg = self.config
        b, _, t, _ = mask.shape
        h, kh, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = Dense((h, dh), ("embed", "heads", "head_dim"), cfg.qkv_bias, config=cfg, name="q_proj")(x)
        k = Dense((kh, dh), ("embed", "kv_heads", "head_dim"), cfg.qkv_bias, config=cfg, name="k_proj")(x)
        v = Dense((kh, dh), ("embed", "kv_heads", "head_dim"), cfg.qkv_bias, config=cfg, name="v_proj")(x)
        if cfg.qk_norm:  # Qwen3, Gemma 3: RMSNorm over head_dim, before RoPE
            q = RMSNorm(cfg, axis_name="head_dim", name="q_norm")(q)
            k = RMSNorm(cfg, axis_name="head_dim", name="k_norm")(k)
        q = q.reshape(b, t, h, dh)  # [B, T, H, Dh]
        k = k.reshape(b, t, kh, dh)  # [B, T, K, Dh]
        v = v.reshape(b, t, kh, dh)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        new_cache = None
        scale = (cfg.query_pre_attn_scalar or dh) ** -0.5  # Gemma 2 / 3 scale by query_pre_attn_scalar
        cap = cfg.attn_logit_softcap
        if cache is not None:  # write the t new entries at slots [index, index + t)
            k_all = jax.lax.dynamic_update_slice(
                cache["k"], k.swapaxes(1, 2).astype(cache["k"].dtype), (0, 0, index, 0)
            )
            v_all = jax.lax.dynamic_update_slice(
                cache["v"], v.swapaxes(1, 2).astype(cache["v"].dtype), (0, 0, index, 0)
            )
            new_cache = {"k": k_all, "v": v_all}
            if cfg.attention_impl in (None, "reference") or cap:  # the cache as stored (no transposed copies)
                out = attention_reference(
                    q, k_all.astype(q.dtype), v_all.astype(q.dtype), mask, scale, True, logit_cap=cap
                )
            else:
                k, v = k_all.swapaxes(1, 2).astype(q.dtype), v_all.swapaxes(1, 2).astype(q.dtype)
                out = attend(q, k, v, mask, scale, cfg.attention_impl)
        else:  # [B, T, H, Dh]
            out = attend(
                q,
                k,
                v,
                mask,
                scale,
                cfg.attention_impl,
                True,
                cap,
                segment_ids=segment_ids,
                sliding_window=window,
            )
        out = Dense(
            (cfg.hidden_size,),
            ("heads", "head_dim", "embed"),
            cfg.out_bias,
            in_dims=2,
            config=cfg,
            name="o_proj",
        )(out.reshape(b * t, h, dh))  # [N, D]
        return out, new_cache
