"""Pallas attention kernels for packed rows: splash attention (TPU) and the Triton flash kernel (GPU).

Both take self-attention over padding-free rows as segment ids (0 = padding), causal, and return what
`attention.attention_reference` returns for the same mask (tested in Pallas interpret mode on CPU, values
and gradients). Off their own backend they run in interpret mode: slow, for tests.

    splash  `jax.experimental.pallas.ops.tpu.splash_attention`: causal or sliding-window masks, logit
            soft-capping (Gemma 2); rows padded up to its block size with padding segments.
    triton  `jax.experimental.pallas.ops.gpu.attention.mha`: causal; no windows, no soft-capping (a config
            that needs them is refused when the model is built, not silently run another way).
GQA's k/v heads are repeated to the query heads for both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KERNELS = ("splash", "triton")
BLOCK = 128  # splash's block along the sequence (rows are padded up to a multiple of it)


def unsupported(kernel: str, sliding_window, logit_cap) -> str | None:
    """Why `kernel` cannot run a model with these options (None: it can)."""
    if kernel == "triton" and sliding_window is not None:
        return "the Triton kernel has no sliding-window mask"
    if kernel == "triton" and logit_cap:
        return "the Triton kernel has no logit soft-capping"
    return None


def _repeat_kv(q, k, v):
    g = q.shape[2] // k.shape[2]
    return (k, v) if g == 1 else (jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2))


def triton_attention(q, k, v, segment_ids, scale):
    """q [B, T, H, Dh], k/v [B, T, K, Dh], segment_ids [B, T] -> [B, T, H, Dh]."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    k, v = _repeat_kv(q, k, v)
    t = q.shape[1]
    n = -(-t // 64) * 64  # the kernel's blocks divide the rows: padding segments at the end
    if n != t:
        q, k, v = (jnp.pad(x, ((0, 0), (0, n - t), (0, 0), (0, 0))) for x in (q, k, v))
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, n - t)))
    sizes = gpu_attention.BlockSizes(
        block_q=64, block_k=64, block_q_dkv=32, block_kv_dkv=32, block_q_dq=32, block_kv_dq=32
    )
    out = gpu_attention.mha(
        q,
        k,
        v,
        segment_ids.astype(jnp.int32),
        sm_scale=scale,
        causal=True,
        block_sizes=sizes,
        interpret=jax.default_backend() != "gpu",
    )
    return out[:, :t]


def _splash(heads: int, length: int, window, logit_cap: float, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    shape = (length, length)
    one = sm.CausalMask(shape) if window is None else sm.LocalMask(shape, (window - 1, 0), 0)
    blk = BLOCK
    sizes = sk.BlockSizes(
        block_q=blk,
        block_kv=blk,
        block_kv_compute=blk,
        block_q_dkv=blk,
        block_kv_dkv=blk,
        block_kv_dkv_compute=blk,
        block_q_dq=blk,
        block_kv_dq=blk,
    )
    return sk.make_splash_mha(
        sm.MultiHeadMask([one] * heads),
        head_shards=1,
        q_seq_shards=1,
        block_sizes=sizes,
        attn_logits_soft_cap=logit_cap or None,
        interpret=interpret,
    )


def splash_attention(q, k, v, segment_ids, scale, sliding_window=None, logit_cap=0.0):
    """q [B, T, H, Dh], k/v [B, T, K, Dh], segment_ids [B, T] -> [B, T, H, Dh]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    k, v = _repeat_kv(q, k, v)
    b, t, h, dh = q.shape
    n = -(-t // BLOCK) * BLOCK  # splash's blocks are multiples of 128
    pad = n - t
    if pad:  # padding segments (0) at the end: causal, so no real query sees them
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)))
    kernel = _splash(h, n, sliding_window, float(logit_cap), jax.default_backend() != "tpu")

    def one(qb, kb, vb, seg):  # [T, H, Dh] -> splash's [H, T, Dh]
        out = kernel(
            (qb * scale).swapaxes(0, 1),
            kb.swapaxes(0, 1),
            vb.swapaxes(0, 1),
            segment_ids=sk.SegmentIds(seg, seg),
        )
        return out.swapaxes(0, 1)

    out = jax.vmap(one)(q, k, v, segment_ids.astype(jnp.int32))
    return out[:, :t].astype(q.dtype)
