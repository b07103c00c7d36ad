"""The decoder: pre-norm blocks (optionally remat'ed and/or under nn.scan), LM head, KV cache.

    logits = Transformer(cfg).apply({"params": p}, input_ids, positions, segment_ids)   # [B, T, V] f32
    (logits, hidden) with return_hidden=True; hidden [B, T, D] only with hidden_only=True.
    With cache=...: returns (output, new_cache).

Parameter tree (non-scanned; with `scan_layers` the per-layer subtrees are stacked under "layers" with
a leading [L] axis, logical name "layers"):
    embed/embedding [V, D]             pos_embed/embedding [P, D] (learned positions only)
    layers_{i}/attn_norm, attn/{q,k,v,o}_proj, attn/{q,k}_norm (Qwen3, Gemma 3), mlp_norm,
             mlp/{gate,up,down}_proj, post_attn_norm and post_mlp_norm (Gemma 2 / 3)
    final_norm                         lm_head/kernel [D, V] (untied only)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.attention import Attention, cache_mask, segment_mask, softcap
from jaxalign.models.config import ModelConfig
from jaxalign.models.layers import MLP, Embed, MoE, gemma_embed_normalizer, make_norm, rope_tables
from jaxalign.sharding import constrain

Cache = dict[str, Any]


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x)). x is [N, D] (flattened tokens).

    Signature fits nn.scan: (x, (mask, rope, index, segment_ids), layer_cache) -> (x, new_layer_cache).
    `layer`: the block's index (its sliding window, for the Pallas kernels; 0 under nn.scan, whose layers
    all have the same window).
    """

    config: ModelConfig
    layer: int = 0

    @nn.compact
    def __call__(self, x, shared, layer_cache):
        mask, rope, index, segment_ids = shared
        cfg = self.config
        x = constrain(x, ("batch", None))  # tokens split over the batch axes, whatever the weights' layout
        attn_out, new_cache = Attention(cfg, name="attn")(
            make_norm(cfg, "attn_norm")(x),
            mask,
            rope,
            layer_cache,
            index,
            segment_ids,
            cfg.layer_window(self.layer),
        )
        if cfg.sandwich_norms:  # Gemma 2 / 3: the sub-layer's output is normalised too
            attn_out = make_norm(cfg, "post_attn_norm")(attn_out)
        x = constrain(x + attn_out, ("batch", None))
        if cfg.num_experts:  # the router's losses read which tokens are real (any query sees a key)
            mlp_out = MoE(cfg, name="moe")(make_norm(cfg, "mlp_norm")(x), valid_tokens(mask))
        else:
            mlp_out = MLP(cfg, name="mlp")(make_norm(cfg, "mlp_norm")(x))
        if cfg.sandwich_norms:
            mlp_out = make_norm(cfg, "post_mlp_norm")(mlp_out)
        x = x + mlp_out
        return constrain(x, ("batch", None)), new_cache


def valid_tokens(mask):
    """[N] float: 1 for the flattened tokens that see at least one key (real ones), 0 for padding."""
    return jnp.any(mask[:, 0], axis=-1).reshape(-1).astype(jnp.float32)


class Transformer(nn.Module):
    """Decoder-only transformer (Llama / Mistral / Qwen2 / Qwen3 / Gemma / GPT-2)."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        cache: Cache | None = None,
        return_hidden: bool = False,
        hidden_only: bool = False,
    ):
        """
        Args:
          input_ids: [B, T] int32.
          positions: [B, T] int32 position of each token within its sequence (for RoPE / learned).
          segment_ids: [B, T] int32; 0 = padding, equal non-zero ids attend to each other causally.
          cache: from `init_cache`; new keys/values are written at [index, index + T).
          return_hidden: also return the final-norm hidden states [B, T, D].
          hidden_only: return only the hidden states (no LM head; for scalar heads).
        Returns:
          logits [B, T, V] float32 | (logits, hidden) | hidden; wrapped as (output, new_cache) when a
          cache is given.
        """
        cfg = self.config
        b, t = input_ids.shape
        embed = Embed(cfg.vocab_size, cfg, name="embed")
        x = constrain(embed(input_ids.reshape(-1)), ("batch", None))  # [N, D]
        if cfg.embed_scale:
            x = x * gemma_embed_normalizer(cfg)
        if cfg.position_embedding == "learned":
            pos_embed = Embed(cfg.max_position_embeddings, cfg, axes=("positions", "embed"), name="pos_embed")
            x = x + pos_embed(positions.reshape(-1))
        # Each layer's (mask, rope, index): the masks and RoPE tables its window and base need, made once.
        masks, ropes = {}, {}
        if cache is None:
            index, layer_caches = None, None
        else:
            index = cache["index"]
            key_valid = jax.lax.dynamic_update_slice(cache["mask"], segment_ids != 0, (0, index))
            layer_caches = cache["layers"]

        def layer_inputs(i):
            window, theta = cfg.layer_window(i), cfg.layer_rope_theta(i)
            if window not in masks:
                masks[window] = (
                    segment_mask(segment_ids, window)
                    if cache is None
                    else cache_mask(key_valid, index, t, window)
                )
            if cfg.position_embedding == "rope" and theta not in ropes:
                own = cfg if theta == cfg.rope_theta else cfg.replace(rope_theta=theta, rope_type="default")
                ropes[theta] = rope_tables(own, positions)
            return (masks[window], ropes.get(theta), index, segment_ids)

        shared = layer_inputs(0)

        block_cls = Block
        if cfg.remat:
            block_cls = nn.remat(
                Block,
                prevent_cse=not cfg.scan_layers,
                policy=getattr(jax.checkpoint_policies, cfg.remat_policy),
            )
        if cfg.scan_layers:
            stack = nn.scan(
                block_cls,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, 0),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, new_layer_caches = stack(cfg, name="layers")(x, shared, layer_caches)
        else:
            new_layer_caches = []
            for i in range(cfg.num_layers):
                x, c = block_cls(cfg, i, name=f"layers_{i}")(
                    x, layer_inputs(i), None if layer_caches is None else layer_caches[i]
                )
                new_layer_caches.append(c)

        x = constrain(make_norm(cfg, "final_norm")(x), ("batch", None))  # [N, D]
        hidden = x.reshape(b, t, cfg.hidden_size)
        if hidden_only:
            out = hidden
        else:
            if cfg.tie_word_embeddings:
                logits = embed.attend(x)
            else:
                logits = LMHead(cfg, name="lm_head")(x)
            logits = softcap(logits.reshape(b, t, cfg.vocab_size), cfg.final_logit_softcap)  # [B, T, V] f32
            out = (logits, hidden) if return_hidden else logits
        if cache is None:
            return out
        new_cache = {"layers": new_layer_caches, "mask": key_valid, "index": index + t}
        return out, new_cache


class LMHead(nn.Module):
    """Untied output projection: x [N, D] -> logits [N, V] float32 (f32 accumulation, no upcast copy)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), ("embed", "vocab")),
            (cfg.hidden_size, cfg.vocab_size),
            jnp.dtype(cfg.param_dtype),
        )
        return jnp.dot(x.astype(cfg.dtype), kernel.astype(cfg.dtype), preferred_element_type=jnp.float32)


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> Cache:
    """Empty KV cache: {"layers": per-layer {"k","v"} [B, K, S, Dh] (stacked [L, ...] dicts when
    scan_layers), "mask": [B, S] bool, "index": int32 scalar}. dtype defaults to the compute dtype."""
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (batch, config.num_kv_heads, max_len, config.head_dim)
    if config.scan_layers:
        full = (config.num_layers,) + shape
        layers: Any = {"k": jnp.zeros(full, dtype), "v": jnp.zeros(full, dtype)}
    else:
        layers = [
            {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.num_layers)
        ]
    return {"layers": layers, "mask": jnp.zeros((batch, max_len), bool), "index": jnp.zeros((), jnp.int32)}


def _dummy_inputs():
    ids = jnp.zeros((1, 1), jnp.int32)
    return ids, ids, jnp.ones((1, 1), jnp.int32)


def _boxed_params(config: ModelConfig, rng, module: nn.Module | None = None):
    module = module or Transformer(config)
    return module.init(rng, *_dummy_inputs())["params"]


def init_params(config: ModelConfig, rng: jax.Array, module: nn.Module | None = None) -> dict:
    """Random parameters (plain pytree, no partitioning boxes) for `module` (default Transformer)."""
    return nn.meta.unbox(_boxed_params(config, rng, module))


def param_logical_axes(config: ModelConfig, module: nn.Module | None = None) -> dict:
    """Same tree as init_params with a tuple of logical axis names per parameter (no computation)."""
    abstract = jax.eval_shape(lambda: _boxed_params(config, jax.random.key(0), module))
    specs = nn.get_partition_spec(abstract)
    return jax.tree.map(
        lambda s: tuple(s), specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)
    )


def stack_layers(params: dict, num_layers: int) -> dict:
    """Per-layer params (layers_0 .. layers_{L-1}) -> scan layout ("layers" with a leading [L] axis).
    Works on a Transformer tree or on a ScalarHeadModel tree (its "transformer" subtree)."""
    if "transformer" in params:
        return {**params, "transformer": stack_layers(params["transformer"], num_layers)}
    layers = [params[f"layers_{i}"] for i in range(num_layers)]
    rest = {k: v for k, v in params.items() if not k.startswith("layers_")}
    return {**rest, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layers(params: dict) -> dict:
    """Scan layout -> per-layer params (inverse of stack_layers)."""
    if "transformer" in params:
        return {**params, "transformer": unstack_layers(params["transformer"])}
    stacked = params["layers"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in params.items() if k != "layers"}
    return {**rest, **{f"layers_{i}": jax.tree.map(lambda x: x[i], stacked) for i in range(n)}}
