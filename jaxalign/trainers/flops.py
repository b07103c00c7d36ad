"""Model FLOPs of a train step, counted from the batch actually fed, and MFU.

Counted per real token (padding is not work done for the user, so it is not counted), per layer:

  dense      2 · (D·(H + 2K)·Dh + H·Dh·D + (3 if gated else 2)·D·F)     q, k, v, o and the MLP
  attention  2 · 2 · H · Dh · k                                            Q·Kᵀ and P·V over the k keys
                                                                             this token attends to
  LM head    2 · D · V                                                     once, after the last layer

A token at position i of its sequence attends to i + 1 keys (causal, within its own sequence; packed
neighbours and padding are not counted even when dense masked attention computes them), so a sequence
of L tokens does Σ k = L(L+1)/2 key reads per head. Training costs 3× the forward (forward + the two
backward matmuls; 2× with a frozen LoRA base, which needs no weight gradients); a frozen reference
forward adds 1× (DPO/KTO without `precompute_ref`).
This is the convention of Chinchilla/PaLM's "model FLOPs" with honest (causal, unpadded) attention;
remat's recomputation is not counted (it is hardware FLOPs, not model FLOPs).

MFU = achieved model FLOP/s ÷ the peak of the devices used. The peak is `train.peak_tflops` per device if
given, else looked up by the device kind for bfloat16 dense matmuls (float32 runs are reported against the
same bfloat16 peak, which is what these chips are bought for); unknown devices (CPUs) get no MFU, only
TFLOP/s.
"""

from __future__ import annotations

import numpy as np

# Dense bfloat16 peak TFLOP/s per device (vendor figures, no sparsity).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "TPU v6": 918.0,
    "TPU v5p": 459.0,
    "TPU v5e": 197.0,
    "TPU v5 lite": 197.0,
    "TPU v4": 275.0,
    "TPU v3": 123.0,
}


def peak_tflops(device_kind: str) -> float | None:
    """Per-device dense bf16 peak for a `jax.Device.device_kind`, or None if unknown (e.g. CPU)."""
    for name, tflops in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if name.lower() in device_kind.lower():
            return tflops
    return None


def dense_flops_per_token(config, lm_head: bool = True) -> float:
    """Forward FLOPs per token of every weight matmul: the layers' projections (a mixture of experts: the
    router and the k experts a token is routed to) and the LM head (a scalar head, `lm_head=False`, for
    reward models and critics)."""
    d, h, k, dh, f = (
        config.hidden_size,
        config.num_heads,
        config.num_kv_heads,
        config.head_dim,
        config.intermediate_size,
    )
    mlp = (3 if config.gated_mlp else 2) * d * f
    if getattr(config, "num_experts", 0):  # a token runs the router and its k experts only
        mlp = d * config.num_experts + config.num_experts_per_tok * 3 * d * config.expert_intermediate_size
    per_layer = d * (h + 2 * k) * dh + h * dh * d + mlp
    return 2.0 * (config.num_layers * per_layer + d * (config.vocab_size if lm_head else 1))


def attention_flops_per_key(config) -> float:
    """Forward FLOPs per (query, key) pair over all layers: Q·Kᵀ and P·V."""
    return 4.0 * config.num_layers * config.num_heads * config.head_dim


def sequence_lengths(segment_ids: np.ndarray) -> np.ndarray:
    """Lengths of every (row, segment) run of non-zero segment ids in [R, T] rows, as a flat array."""
    seg = np.asarray(segment_ids)
    rows = np.repeat(np.arange(seg.shape[0]), seg.shape[1]).reshape(seg.shape)
    real = seg > 0
    keys = rows[real].astype(np.int64) * (int(seg.max(initial=0)) + 1) + seg[real]
    return np.bincount(np.unique(keys, return_inverse=True)[1]) if keys.size else np.zeros(0, np.int64)


def batch_flops(config, batch: dict, passes: float, lm_head: bool = True) -> float:
    """Model FLOPs of `passes` forward-equivalents over every sequence of a data batch (numpy rows: every
    key ending in ``segment_ids`` of shape [R, T]). A batch with a ``head_index`` (the LM head at the loss's
    positions only) counts the head at the loss masks' positions (keys ending in ``loss_mask``)."""
    tokens, keys, read = 0.0, 0.0, 0.0
    for name, seg in batch.items():
        if name.endswith("segment_ids") and np.ndim(seg) == 2:
            lengths = sequence_lengths(seg).astype(np.float64)
            tokens += lengths.sum()
            keys += (lengths * (lengths + 1) / 2).sum()
        if name.endswith("loss_mask") and np.ndim(seg) == 2:
            read += float(np.sum(np.asarray(seg) != 0))
    head_tokens = read if any(k.endswith("head_index") for k in batch) else tokens
    head = 2.0 * config.hidden_size * config.vocab_size if lm_head else 0.0  # per token through the head
    body = dense_flops_per_token(config, lm_head) - head
    return passes * (body * tokens + head * head_tokens + attention_flops_per_key(config) * keys)


def step_passes(reference: bool = False, frozen_base: bool = False) -> float:
    """Forward-equivalents per train step: 3 for forward + backward (2 when the base is frozen, as with
    LoRA: no weight gradients of the base), + 1 for a frozen reference forward."""
    return (2.0 if frozen_base else 3.0) + (1.0 if reference else 0.0)
