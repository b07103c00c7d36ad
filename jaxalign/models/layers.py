"""Building blocks: dense projections on flattened tokens, norms, embeddings, RoPE, MLP.

Activations inside a block are kept as 2-D token matrices `[N, D]` with N = B·T: on CPU, XLA computes
dense weight-gradients of 3-D activations ~3× slower than of 2-D ones (see ENV_NOTES), so every
projection here contracts a `[N, in]` matrix with a (reshaped) kernel.

Every parameter is created through `nn.with_logical_partitioning` with logical axis names
("embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "positions"); jaxalign/sharding.py maps them
onto mesh axes.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.losses.router import add_loss_gradient, router_losses
from jaxalign.models.config import ModelConfig


def _init(config: ModelConfig):
    return nn.initializers.normal(stddev=config.initializer_range)


class Dense(nn.Module):
    """y[N, *features] = x[N, *in] · kernel[*in, *features] (+ bias[*features]).

    The kernel keeps its structured shape (e.g. [D, H, Dh]) so each dimension has a logical name,
    but the product is one 2-D matmul on flattened tokens.
    """

    features: Sequence[int]
    kernel_axes: Sequence[str | None]  # logical names for kernel dims: input dims then output dims
    use_bias: bool = False
    in_dims: int = 1  # number of trailing input dims contracted
    config: ModelConfig | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        in_shape = x.shape[-self.in_dims :]
        features = tuple(self.features)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(_init(cfg), tuple(self.kernel_axes)),
            in_shape + features,
            jnp.dtype(cfg.param_dtype),
        )
        dtype = jnp.dtype(cfg.dtype)
        lead = x.shape[: -self.in_dims]
        x2 = x.reshape((-1, math.prod(in_shape))).astype(dtype)  # [N, in]
        k2 = kernel.reshape((math.prod(in_shape), math.prod(features))).astype(dtype)
        y = jnp.dot(x2, k2)  # [N, out]
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(
                    nn.initializers.zeros_init(), tuple(self.kernel_axes[self.in_dims :])
                ),
                features,
                jnp.dtype(cfg.param_dtype),
            )
            y = y + bias.reshape(-1).astype(dtype)
        return y.reshape(lead + features)


class RMSNorm(nn.Module):
    """x / rms(x) * (offset + scale), statistics in float32 (as transformers' Llama/Gemma RMSNorm)."""

    config: ModelConfig
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        init = nn.initializers.zeros_init() if cfg.norm_scale_offset else nn.initializers.ones_init()
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(init, (self.axis_name,)),
            (x.shape[-1],),
            jnp.dtype(cfg.param_dtype),
        )
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + cfg.norm_eps)
        if cfg.norm_scale_offset:  # Gemma: multiply in float32, then cast
            return (xf * (cfg.norm_scale_offset + scale.astype(jnp.float32))).astype(cfg.dtype)
        # Llama: cast the normalised activations first, then scale in the compute dtype.
        return scale.astype(cfg.dtype) * xf.astype(cfg.dtype)


class LayerNorm(nn.Module):
    """(x - mean) / std * scale + bias, in float32 (GPT-2)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        d = x.shape[-1]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
            (d,),
            jnp.dtype(cfg.param_dtype),
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            (d,),
            jnp.dtype(cfg.param_dtype),
        )
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(cfg.dtype)


def make_norm(config: ModelConfig, name: str) -> nn.Module:
    return LayerNorm(config, name=name) if config.norm == "layer" else RMSNorm(config, name=name)


class Embed(nn.Module):
    """Token (or position) embedding table [num_embeddings, D]; `attend` gives tied-head logits."""

    num_embeddings: int
    config: ModelConfig
    axes: tuple[str, str] = ("vocab", "embed")

    def setup(self):
        cfg = self.config
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(_init(cfg), self.axes),
            (self.num_embeddings, cfg.hidden_size),
            jnp.dtype(cfg.param_dtype),
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids [...] int32 -> [..., D] in compute dtype."""
        return jnp.take(self.embedding, ids, axis=0).astype(self.config.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """x [N, D] -> logits [N, V] float32 (accumulated in float32, no extra upcast copy)."""
        emb = self.embedding.astype(self.config.dtype)
        return jax.lax.dot_general(x, emb, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def rope_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """positions [B, T] int32 -> (cos, sin) each [B, T, Dh] float32 (halves repeated, HF layout)."""
    inv_freq = jnp.asarray(config.rope_inv_freq())  # [Dh/2]
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, Dh]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, H, Dh] rotated by position ("rotate_half" convention of transformers), float32 math."""
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "silu":
        return jax.nn.silu(x)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    raise ValueError(f"unknown activation {name!r}")


class MLP(nn.Module):
    """Gated (SwiGLU / GeGLU): down(act(gate(x)) * up(x)); plain (GPT-2): down(act(up(x))).

    x [N, D] -> [N, D].
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        f, bias = cfg.intermediate_size, cfg.mlp_bias
        up = Dense((f,), ("embed", "mlp"), bias, config=cfg, name="up_proj")(x)  # [N, F]
        if cfg.gated_mlp:
            gate = Dense((f,), ("embed", "mlp"), bias, config=cfg, name="gate_proj")(x)  # [N, F]
            h = activation(cfg.activation, gate) * up
        else:
            h = activation(cfg.activation, up)
        return Dense((cfg.hidden_size,), ("mlp", "embed"), bias, config=cfg, name="down_proj")(h)


_ROUTER_STATS = ("router/balance", "router/z", "router/load")


class MoE(nn.Module):
    """Top-k routed experts (Mixtral, Qwen3-MoE), dropless: x [N, D] -> [N, D].

        p = softmax(x · router)  [N, E] (float32);  top-k experts per token, weights w = their p
        (renormalised to sum 1 with `norm_topk_prob`);  y = Σ_k w_k · down_e(act(gate_e(x)) * up_e(x))

    The N·k (token, expert) pairs are sorted by expert and each expert's rows go through its weights in one
    grouped matmul (`jax.lax.ragged_dot`): no token is dropped and no capacity padded. Expert kernels
    carry the logical axis "expert". The router's load-balancing and z losses (`losses.router_losses`, over
    the real tokens) enter the gradient of whatever objective trains the model, weighted by
    `router_aux_loss_coef` / `router_z_loss_coef` (`losses.add_loss_gradient`); the router's logits and
    statistics are also sown as ("intermediates", "router_logits") and ("intermediates", "router"):
    {"router/balance", "router/z", "router/load" [E]} (what `objectives` logs when it collects them).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        """x [N, D]; valid [N] (1 on real tokens: the router losses' means leave padding out)."""
        cfg = self.config
        e, k, f, d = cfg.num_experts, cfg.num_experts_per_tok, cfg.expert_intermediate_size, cfg.hidden_size
        dtype = jnp.dtype(cfg.dtype)
        router = self.param(
            "router",
            nn.with_logical_partitioning(_init(cfg), ("embed", None)),
            (d, e),
            jnp.dtype(cfg.param_dtype),
        )
        logits = jnp.dot(x.astype(dtype), router.astype(dtype), preferred_element_type=jnp.float32)  # [N, E]
        self.sow("intermediates", "router_logits", logits)
        probs = jax.nn.softmax(logits, axis=-1)
        weights, experts = jax.lax.top_k(probs, k)  # [N, k]
        if cfg.norm_topk_prob:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)

        def kernel(name, shape, axes):
            w = self.param(
                name, nn.with_logical_partitioning(_init(cfg), axes), shape, jnp.dtype(cfg.param_dtype)
            )
            return w.astype(dtype)

        gate = kernel("gate_proj", (e, d, f), ("expert", "embed", "mlp"))
        up = kernel("up_proj", (e, d, f), ("expert", "embed", "mlp"))
        down = kernel("down_proj", (e, f, d), ("expert", "mlp", "embed"))
        flat = experts.reshape(-1)  # [N·k]
        order = jnp.argsort(flat, stable=True)  # the pairs grouped by expert
        token = order // k
        sizes = jnp.bincount(flat, length=e).astype(jnp.int32)  # [E] rows per expert
        xs = jnp.take(x.astype(dtype), token, axis=0)  # [N·k, D]
        h = activation(cfg.activation, jax.lax.ragged_dot(xs, gate, sizes)) * jax.lax.ragged_dot(
            xs, up, sizes
        )
        y = jax.lax.ragged_dot(h, down, sizes).astype(jnp.float32)  # [N·k, D]
        y = y * jnp.take(weights.reshape(-1), order)[:, None]
        out = jnp.zeros((x.shape[0], d), jnp.float32).at[token].add(y).astype(dtype)
        valid = jnp.ones(x.shape[:1]) if valid is None else valid
        balance, m = router_losses(logits, experts, valid)  # (dead code unless used or collected)
        self.sow("intermediates", "router", {k: jax.lax.stop_gradient(m[k]) for k in _ROUTER_STATS})
        if cfg.router_aux_loss_coef or cfg.router_z_loss_coef:  # in every objective's gradient
            aux = cfg.router_aux_loss_coef * balance + cfg.router_z_loss_coef * m["router/z"]
            out = add_loss_gradient(out, aux)
        return out


def gemma_embed_normalizer(config: ModelConfig) -> jax.Array:
    """sqrt(D) rounded to the compute dtype, as transformers' Gemma does."""
    return jnp.asarray(np.sqrt(config.hidden_size), dtype=config.dtype)
