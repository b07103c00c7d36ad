"""Autoregressive generation with the KV cache: one jitted prefill + an XLA while loop over new tokens.

    out = generate(model, params, prompt_ids, prompt_segment_ids, rng, max_new_tokens=64,
                   temperature=1.0, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    # or, jitted once with the training mesh's shardings:
    gen = make_generate_fn(model, max_new_tokens=64, eos_ids=(2,), pad_id=0, mesh=mesh,
                           param_shardings=param_shardings)
    out = gen(params, prompt_ids, prompt_segment_ids, rng)       # GenerateOutput, all [B, N] / [B]

Prompts are left-padded [B, P] (`prompt_segment_ids` 0 on padding, non-zero on real tokens) so that
every row's last prompt token sits in the last column and all rows write their new tokens into the same
cache slot at each step. Positions are recomputed from the padding: each row's first real token is at
position 0.

How it runs (all inside one jit, no host sync per token):
  1. prefill: the first P-1 prompt columns go through the model with a cache of P + max_new_tokens
     slots, returning hidden states only (no [B, P, V] logits, which for a 150k vocabulary would be
     the biggest array of the whole rollout);
  2. a `lax.while_loop`, one iteration per new token: feed the previous token (the last prompt
     column at step 0) as a [B, 1] step through the model, which writes its key/value into the
     cache in place (`dynamic_update_slice`), sample from the [B, V] logits, write token / log-probs
     / mask into preallocated [B, N] buffers. It exits early once every row is done. With
     `cache_buckets=k` there are k such loops over caches of growing length (see make_generate_fn).

A row is done after it emits one of `eos_ids`, after its generated tail equals one of
`stop_sequences` (token-id sequences, checked on device), or at `max_new_tokens`. The EOS / stop
tokens themselves are kept with mask 1 (a policy must learn to emit them); every later position holds
`pad_id`, log-prob 0 and mask 0, and done rows feed padding (segment id 0) to the model, so nothing
they compute is visible to anyone. Rows with no real prompt token start done (batch padding).

Log-probabilities (see `sample_token_with_logprobs`):
  `logprobs`: of the sampled token under the *sampling* distribution (tempered, top-k/top-p
    truncated; 0 for greedy). This is the behaviour policy's log-probability.
  `model_logprobs`: under the untempered, untruncated model, log_softmax(logits) at temperature 1.
    This is the policy's log-probability that RL objectives (PPO ratios, KL to a reference) use; it
    matches a full forward pass over prompt + completion up to float error.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jaxalign import models
from jaxalign import sharding as sharding_lib
from jaxalign.sampling.sampling import _check, sample_token_with_logprobs


class GenerateOutput(NamedTuple):
    """Result of `generate`; N = max_new_tokens. Positions after a row is done are padding."""

    tokens: jax.Array  # [B, N] int32 generated ids (incl. the EOS / stop tokens), pad_id after
    logprobs: jax.Array  # [B, N] float32 log p of each token under the sampling distribution
    model_logprobs: jax.Array  # [B, N] float32 log p under the untempered model (temperature 1)
    mask: jax.Array  # [B, N] int32 1 for generated tokens (incl. EOS), 0 after
    lengths: jax.Array  # [B] int32 number of generated tokens (= mask.sum(-1))


def prompt_positions(prompt_segment_ids: jax.Array) -> jax.Array:
    """[B, P] segment ids of a left-padded batch -> [B, P] int32 positions, 0 at each row's first real
    token (padding gets 0 too; it is masked out anyway)."""
    real = (prompt_segment_ids != 0).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(real, axis=-1) - 1, 0).astype(jnp.int32)


def _stop_table(stop_sequences: Sequence[Sequence[int]]):
    """Stop sequences right-aligned in a [S, L] table, -1 where a shorter sequence has no token."""
    seqs = [tuple(int(t) for t in s) for s in stop_sequences]
    if any(not s for s in seqs):
        raise ValueError("empty stop sequence")
    width = max(len(s) for s in seqs)
    return jnp.asarray([(-1,) * (width - len(s)) + s for s in seqs], jnp.int32)


def _constrain(x, mesh, logical):
    if mesh is None:
        return x
    spec = sharding_lib.logical_to_spec(logical, mesh, shape=x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _constrain_cache(cache, mesh, config):
    """Pins the cache layout: batch over (data, fsdp), kv heads over "tensor" (where they divide).

    Accepts k/v stored as [B, S, K, Dh] (INTERFACES.md) or [B, K, S, Dh], with an optional leading
    [L] axis (scan_layers); the layout is read from where K sits.
    """
    if mesh is None:
        return cache
    kh, dh = config.num_kv_heads, config.head_dim

    def kv(x):
        lead = ("layers",) if x.ndim == 5 else ()
        b_s_k_d = ("batch", None, "kv_heads", "head_dim")
        b_k_s_d = ("batch", "kv_heads", None, "head_dim")
        axes = b_s_k_d if x.shape[-2:] == (kh, dh) else b_k_s_d if x.shape[-3] == kh else None
        return x if axes is None else _constrain(x, mesh, lead + axes)

    return {
        **cache,
        "layers": jax.tree.map(kv, cache["layers"]),
        "mask": _constrain(cache["mask"], mesh, ("batch", None)),
    }


def _bucket_limits(n: int, buckets: int) -> list[int]:
    """Step counts at which the cache grows: `buckets` near-equal parts of n (the last one is n)."""
    if buckets < 1:
        raise ValueError(f"cache_buckets must be >= 1, got {buckets}")
    return sorted({-(-n * (j + 1) // buckets) for j in range(min(buckets, n))})


def _grow_cache(cache, config, length: int, dtype):
    """Pads every cache array along its slot axis to `length` slots (zeros / mask False), which is
    the cache `init_cache(length)` would have held. The slot axis is found by comparing the shapes of
    two abstract caches, so this does not depend on the model's cache layout."""
    b = cache["mask"].shape[0]
    one, two = (jax.eval_shape(lambda s=s: models.init_cache(config, b, s, dtype)) for s in (1, 2))

    def grow(x, a, c):
        axes = [i for i, (u, v) in enumerate(zip(a.shape, c.shape)) if u != v]
        if not axes:
            return x
        widths = [(0, 0)] * x.ndim
        widths[axes[0]] = (0, length - x.shape[axes[0]])
        return jnp.pad(x, widths)

    return jax.tree.map(grow, cache, one, two)


def _generate(
    model,
    params,
    prompt_ids,
    prompt_segment_ids,
    rng,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_ids: tuple[int, ...],
    pad_id: int,
    stop_sequences: tuple[tuple[int, ...], ...],
    cache_dtype,
    cache_buckets: int,
    mesh,
):
    """The traced body of `generate` (see the module docstring)."""
    b, p = prompt_ids.shape
    n = max_new_tokens
    if rng is None and temperature != 0:
        raise ValueError("sampling with temperature > 0 needs an rng key (None is only for greedy)")
    prompt_ids = prompt_ids.astype(jnp.int32)
    real = prompt_segment_ids != 0  # [B, P]
    positions = prompt_positions(prompt_segment_ids)
    prompt_len = real.sum(-1).astype(jnp.int32)  # [B]
    apply = functools.partial(model.apply, {"params": params})

    limits = _bucket_limits(n, cache_buckets)
    cache = _constrain_cache(
        models.init_cache(model.config, b, p + limits[0], cache_dtype), mesh, model.config
    )
    if p > 1:  # prefill all but the last prompt column; hidden states only (the logits are unused)
        _, cache = apply(
            prompt_ids[:, :-1],
            positions[:, :-1],
            real[:, :-1].astype(jnp.int32),
            cache=cache,
            hidden_only=True,
        )
        cache = _constrain_cache(cache, mesh, model.config)

    eos = jnp.asarray(eos_ids, jnp.int32)  # [E]
    stops = _stop_table(stop_sequences) if stop_sequences else None  # [S, L]
    batch_axes = ("batch", None)

    def buffer(value, dtype):
        return _constrain(jnp.full((b, n), value, dtype), mesh, batch_axes)

    state = dict(
        i=jnp.zeros((), jnp.int32),
        cache=cache,
        token=prompt_ids[:, -1],  # [B] next input token
        position=positions[:, -1],  # [B] its position
        done=prompt_len == 0,  # [B] rows with no prompt are batch padding
        tail=None if stops is None else jnp.full((b, stops.shape[1]), -1, jnp.int32),
        tokens=buffer(pad_id, jnp.int32),
        logprobs=buffer(0.0, jnp.float32),
        model_logprobs=buffer(0.0, jnp.float32),
        mask=buffer(0, jnp.int32),
    )

    def cond(limit):
        return lambda s: (s["i"] < limit) & ~jnp.all(s["done"])

    def body(s):
        active = ~s["done"]
        logits, cache = apply(
            s["token"][:, None], s["position"][:, None], active[:, None].astype(jnp.int32), cache=s["cache"]
        )
        step_rng = None if temperature == 0 else jax.random.fold_in(rng, s["i"])
        tok, lp, mlp = sample_token_with_logprobs(logits[:, -1], step_rng, temperature, top_k, top_p)
        tok = jnp.where(active, tok, pad_id)
        finished = jnp.any(tok[:, None] == eos[None, :], axis=-1) if eos_ids else jnp.zeros_like(active)
        tail = s["tail"]
        if stops is not None:  # shift the last-L-tokens window and compare with every stop sequence
            tail = jnp.concatenate([tail[:, 1:], tok[:, None]], axis=1)  # [B, L]
            hit = (tail[:, None, :] == stops[None]) | (stops[None] < 0)  # [B, S, L]
            finished |= jnp.any(jnp.all(hit, axis=-1), axis=-1)
        i = s["i"]

        def put(buf, value):
            return jax.lax.dynamic_update_slice(buf, value[:, None].astype(buf.dtype), (0, i))

        return dict(
            i=i + 1,
            cache=cache,
            token=tok,
            position=s["position"] + 1,
            done=s["done"] | (active & finished),
            tail=tail,
            tokens=put(s["tokens"], tok),
            logprobs=put(s["logprobs"], jnp.where(active, lp, 0.0)),
            model_logprobs=put(s["model_logprobs"], jnp.where(active, mlp, 0.0)),
            mask=put(s["mask"], active),
        )

    s = state
    for j, limit in enumerate(limits):
        if j:  # the next bucket: a longer cache (a copy once per bucket, not per token)
            s = {
                **s,
                "cache": _constrain_cache(
                    _grow_cache(s["cache"], model.config, p + limit, cache_dtype), mesh, model.config
                ),
            }
        s = jax.lax.while_loop(cond(limit), body, s)
    return GenerateOutput(
        tokens=s["tokens"],
        logprobs=s["logprobs"],
        model_logprobs=s["model_logprobs"],
        mask=s["mask"],
        lengths=s["mask"].sum(-1).astype(jnp.int32),
    )


def _validate(max_new_tokens, temperature, top_k, top_p, eos_ids, stop_sequences):
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    _check(temperature, top_k, top_p)
    eos_ids = (eos_ids,) if isinstance(eos_ids, int) else tuple(int(e) for e in (eos_ids or ()))
    stop_sequences = tuple(tuple(int(t) for t in s) for s in stop_sequences)
    return eos_ids, stop_sequences


def make_generate_fn(
    model,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids: int | Sequence[int] = (),
    pad_id: int = 0,
    stop_sequences: Sequence[Sequence[int]] = (),
    cache_dtype: str | None = None,
    cache_buckets: int = 1,
    mesh: jax.sharding.Mesh | None = None,
    param_shardings=None,
    donate_prompts=False,
):
    """Returns a jitted `gen(params, prompt_ids, prompt_segment_ids, rng) -> GenerateOutput`.

    Args:
      model: a `models.Transformer`.
      max_new_tokens: N, the number of decode steps at most; the cache holds P + N slots.
      temperature, top_k, top_p: see `sampling.process_logits` (temperature 0 = greedy).
      eos_ids: one id or several; a row stops after emitting any of them (empty = never).
      pad_id: written at every position after a row is done.
      stop_sequences: token-id sequences (e.g. `prompts.encode_stop_strings`); a row stops once its
        generated tokens end with one of them (only generated tokens are matched, not the prompt).
      cache_dtype: KV cache dtype (default the model's compute dtype).
      cache_buckets: split the N steps into this many near-equal phases, each a while loop over a cache
        of P + (steps so far) slots, so that early tokens attend over a short cache instead of all
        P + N slots (attention reads the whole cache it is given). Costs one compiled copy of the
        decode step per bucket and a cache copy between buckets; pays off when N is large compared
        with P, and more so when most rows stop early (later buckets are skipped once all are done).
      mesh: with a mesh, the batch (prompts and outputs) is sharded over ("data", "fsdp"), the KV cache
        over the batch and, where they divide, kv heads over "tensor", and the params by
        `param_shardings` (default: the model's logical axes under `sharding.LOGICAL_AXIS_RULES`,
        i.e. the training layout; no copy is made when params already have it).
      donate_prompts: donate the prompt arrays.

    The rng may be a typed key or a raw uint32 key (or None for greedy decoding). Tokens of step i use
    `fold_in(rng, i)`, so the result does not depend on the mesh.
    """
    eos_ids, stop_sequences = _validate(max_new_tokens, temperature, top_k, top_p, eos_ids, stop_sequences)
    fn = functools.partial(
        _generate,
        model,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=eos_ids,
        pad_id=pad_id,
        stop_sequences=stop_sequences,
        cache_dtype=cache_dtype,
        cache_buckets=cache_buckets,
        mesh=mesh,
    )
    donate = (1, 2) if donate_prompts else ()
    if mesh is None:
        return jax.jit(fn, donate_argnums=donate)
    if param_shardings is None:
        shapes = jax.eval_shape(lambda: models.init_params(model.config, jax.random.key(0)))
        param_shardings = sharding_lib.logical_to_shardings(
            models.param_logical_axes(model.config), mesh, shapes=shapes
        )
    batch = sharding_lib.batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    out = GenerateOutput(batch, batch, batch, batch, batch)
    return jax.jit(
        fn, in_shardings=(param_shardings, batch, batch, replicated), out_shardings=out, donate_argnums=donate
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "model",
        "max_new_tokens",
        "temperature",
        "top_k",
        "top_p",
        "eos_ids",
        "pad_id",
        "stop_sequences",
        "cache_dtype",
        "cache_buckets",
    ),
)
def _generate_jit(model, params, prompt_ids, prompt_segment_ids, rng, **kwargs):
    return _generate(model, params, prompt_ids, prompt_segment_ids, rng, mesh=None, **kwargs)


def generate(
    model,
    params,
    prompt_ids,
    prompt_segment_ids,
    rng,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids: int | Sequence[int] = (),
    pad_id: int = 0,
    stop_sequences: Sequence[Sequence[int]] = (),
    cache_dtype: str | None = None,
    cache_buckets: int = 1,
) -> GenerateOutput:
    """Samples up to `max_new_tokens` per row of a left-padded prompt batch (see `make_generate_fn`).

    Args:
      prompt_ids: [B, P] int left-padded prompts.
      prompt_segment_ids: [B, P] int (or bool mask), 0 on padding, non-zero on real tokens.
      rng: PRNG key (unused when temperature == 0).

    Jitted and cached on (model, settings, shapes); params keep whatever sharding they have.
    """
    eos_ids, stop_sequences = _validate(max_new_tokens, temperature, top_k, top_p, eos_ids, stop_sequences)
    return _generate_jit(
        model,
        params,
        jnp.asarray(prompt_ids),
        jnp.asarray(prompt_segment_ids),
        rng,
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        eos_ids=eos_ids,
        pad_id=int(pad_id),
        stop_sequences=stop_sequences,
        cache_dtype=cache_dtype,
        cache_buckets=int(cache_buckets),
    )


def to_training_batch(prompt_ids, prompt_segment_ids, out: GenerateOutput) -> dict:
    """Prompt + completion as a CLM-style batch for scoring / training the rollout (T = P + N - 1).

    Returns the data pipeline's five keys plus the sampler's log-probs aligned with `targets`:
      input_ids, targets, positions, segment_ids: [B, T] int32 (segment id 1 on prompt and generated
        tokens, 0 on padding on either side);
      loss_mask: [B, T] float32, 1 where `targets` is a generated token (incl. the EOS);
      logprobs, model_logprobs: [B, T] float32, the sampler's values at those targets, 0 elsewhere.
    So `token_logprobs(forward(input_ids), targets) * loss_mask` reproduces `model_logprobs` in place.
    """
    b, p = prompt_ids.shape
    seq = jnp.concatenate([jnp.asarray(prompt_ids, jnp.int32), out.tokens], axis=1)  # [B, P+N]
    seg = jnp.concatenate([(jnp.asarray(prompt_segment_ids) != 0), out.mask != 0], axis=1).astype(jnp.int32)
    positions = prompt_positions(seg)
    zeros = jnp.zeros((b, p - 1), jnp.float32)
    return dict(
        input_ids=seq[:, :-1],
        targets=seq[:, 1:],
        positions=positions[:, :-1],
        segment_ids=seg[:, :-1],
        loss_mask=jnp.concatenate([zeros, out.mask.astype(jnp.float32)], axis=1),
        logprobs=jnp.concatenate([zeros, out.logprobs], axis=1),
        model_logprobs=jnp.concatenate([zeros, out.model_logprobs], axis=1),
    )
