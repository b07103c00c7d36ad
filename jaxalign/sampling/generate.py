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

Multi-turn episodes (`jaxalign/envs/episodes.py`) keep the cache (`keep_cache=True`, no compaction) and
continue it with `make_continue_fn`: each later turn prefills only the tokens the environment appended,
at the slots after the earlier turns', and decodes on; the cache grows by those slots only.

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
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxalign import models
from jaxalign import sharding as sharding_lib
from jaxalign.sampling.sampling import _check, sample_token_by_inverse_cdf, sample_token_with_logprobs


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


def _batch_shards(mesh) -> int:
    """Devices the batch axis is split over under the rules table (1 without a mesh)."""
    if mesh is None:
        return 1
    spec = sharding_lib.logical_to_spec(("batch",), mesh)[0]
    names = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    return int(np.prod([mesh.shape[a] for a in names], dtype=np.int64))


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


# Compaction: the batch shrinks by this factor whenever that many rows are done, at most this many times.
COMPACT_FACTOR = 2
COMPACT_LEVELS = 3


class Stage(NamedTuple):
    """One decode phase: a while loop over `rows` rows and a cache of `slots` slots, left when `limit`
    steps are done or (when `shrink_to` > 0) when at most `shrink_to` rows are still running."""

    rows: int
    slots: int
    limit: int
    shrink_to: int


def stages(p: int, n: int, rows: int, *, cache_buckets: int = 1, compact: bool = True, shards: int = 1):
    """The static plan of decode phases (see `make_generate_fn`): the cache grows through `cache_buckets`
    phases at full batch, then, in the last (full-length) phase, the batch is compacted by COMPACT_FACTOR
    at most COMPACT_LEVELS times, keeping each size a multiple of `shards` (the batch axes' devices)."""
    limits = _bucket_limits(n, cache_buckets)
    sizes = [rows]
    while compact and len(sizes) <= COMPACT_LEVELS:
        nxt = sizes[-1] // COMPACT_FACTOR
        if nxt < 1 or sizes[-1] % COMPACT_FACTOR or nxt % shards:
            break
        sizes.append(nxt)
    plan = [(rows, p + lim, lim) for lim in limits[:-1]] + [(b, p + n, n) for b in sizes]
    return [
        Stage(b, s, lim, plan[j + 1][0] if j + 1 < len(plan) and plan[j + 1][0] < b else 0)
        for j, (b, s, lim) in enumerate(plan)
    ]


def cache_axes(config, dtype):
    """Per cache leaf, (batch axis, slot axis) or None, found by comparing abstract caches of other sizes
    (so nothing here depends on the model's cache layout)."""
    shape = lambda b, s: jax.eval_shape(lambda: models.init_cache(config, b, s, dtype))  # noqa: E731
    base, wide, long = shape(1, 1), shape(2, 1), shape(1, 2)

    def axis(a, c):
        diff = [i for i, (u, v) in enumerate(zip(a.shape, c.shape)) if u != v]
        return diff[0] if diff else None

    return jax.tree.map(lambda a, w, lo: (axis(a, w), axis(a, lo)), base, wide, long)


def _grow_cache(cache, axes, length: int):
    """Pads every cache array along its slot axis to `length` slots (zeros / mask False): the cache
    `init_cache(length)` would have held."""

    def grow(x, ax):
        if ax[1] is None:
            return x
        widths = [(0, 0)] * x.ndim
        widths[ax[1]] = (0, length - x.shape[ax[1]])
        return jnp.pad(x, widths)

    return jax.tree.map(grow, cache, axes, is_leaf=lambda a: isinstance(a, tuple))


def _map_rows(fn, cache, axes):
    """`fn(x, batch_axis)` on every cache leaf that has a batch axis."""
    return jax.tree.map(
        lambda x, ax: x if ax[0] is None else fn(x, ax[0]),
        cache,
        axes,
        is_leaf=lambda a: isinstance(a, tuple),
    )


def _take_rows(cache, axes, order):
    """The cache's rows `order` (along each leaf's batch axis)."""
    return _map_rows(lambda x, axis: jnp.take(x, order, axis=axis), cache, axes)


def repeat_cache_rows(cache, axes, g):
    """Each row of the cache repeated g times (contiguously): a prefilled prompt shared by its g samples."""
    return _map_rows(lambda x, axis: jnp.repeat(x, g, axis=axis), cache, axes)


BUFFERS = ("tokens", "logprobs", "model_logprobs", "mask")


def _generate(
    model,
    params,
    prompt_ids,
    prompt_segment_ids,
    rng,
    row_ids=None,
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
    num_samples: int = 1,
    compact: bool = True,
    mesh=None,
    cache=None,
    start_positions=None,
    keep_cache: bool = False,
):
    """The traced body of `generate` (see the module docstring). With `cache` (a multi-turn episode's KV
    so far, see `make_continue_fn`), `prompt_ids` are the tokens appended to each row's context, placed
    from `start_positions` [R] on, and the cache is returned with the output."""
    u, p = prompt_ids.shape  # u distinct prompts, each sampled g times: r rows
    g, n = num_samples, max_new_tokens
    r = u * g
    if keep_cache and compact:
        raise ValueError("keep_cache needs compact=False (a compacted batch drops the finished rows' KV)")
    if cache is not None and (g != 1 or compact):
        raise ValueError("continuing a cache takes num_samples=1 and compact=False (rows keep their slots)")
    if rng is None and temperature != 0:
        raise ValueError("sampling with temperature > 0 needs an rng key (None is only for greedy)")
    cfg = model.config
    dtype = jnp.dtype(cache_dtype or cfg.dtype)
    axes = cache_axes(cfg, dtype)
    prompt_ids = prompt_ids.astype(jnp.int32)
    real = prompt_segment_ids != 0  # [U, P]
    positions = prompt_positions(prompt_segment_ids)
    if start_positions is not None:  # the appended tokens continue each row's positions
        positions = positions + start_positions.astype(jnp.int32)[:, None]
    apply = functools.partial(model.apply, {"params": params})
    shards = _batch_shards(mesh)
    plan = stages(p, n, r, cache_buckets=cache_buckets, compact=compact, shards=shards)
    base = 0 if cache is None else cache["mask"].shape[1]  # slots already there (earlier turns)

    def pin(cache):
        return _constrain_cache(cache, mesh, cfg)

    # Prefill all but the last prompt column, once per distinct prompt; hidden states only (no logits).
    if cache is None:
        cache = models.init_cache(cfg, u, plan[0].slots, dtype)
    else:  # the earlier turns' KV is kept; only the appended tokens are prefilled, after it
        cache = _grow_cache(cache, axes, base + plan[0].slots)
    if p > 1:
        _, cache = apply(
            prompt_ids[:, :-1],
            positions[:, :-1],
            real[:, :-1].astype(jnp.int32),
            cache=pin(cache) if u % shards == 0 else cache,
            hidden_only=True,
        )
    if g > 1:  # the prompt's KV given to its g samples (rows [i·g, (i+1)·g))
        cache = repeat_cache_rows(cache, axes, g)
    rep = lambda x: jnp.repeat(x, g, axis=0) if g > 1 else x  # noqa: E731

    eos = jnp.asarray(eos_ids, jnp.int32)  # [E]
    stops = _stop_table(stop_sequences) if stop_sequences else None  # [S, L]
    batch_axes = ("batch", None)
    rows = jnp.arange(r, dtype=jnp.int32) if row_ids is None else row_ids.astype(jnp.int32)
    keys = None
    if temperature != 0:  # one key per sequence, from its id: samples do not depend on the batching
        keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, rows)

    def buffer(value, dtype, b):
        return _constrain(jnp.full((b, n), value, dtype), mesh, batch_axes)

    fills = dict(tokens=(pad_id, jnp.int32), logprobs=(0.0, jnp.float32))
    fills.update(model_logprobs=(0.0, jnp.float32), mask=(0, jnp.int32))
    out = {k: buffer(v, t, r) for k, (v, t) in fills.items()}
    s = dict(
        i=jnp.zeros((), jnp.int32),
        cache=pin(cache),
        token=rep(prompt_ids[:, -1]),  # [R] next input token
        position=rep(positions[:, -1]),  # [R] its position
        done=rep(real.sum(-1) == 0),  # [R] rows with no prompt are batch padding
        tail=None if stops is None else jnp.full((r, stops.shape[1]), -1, jnp.int32),
        keys=keys,
        row=jnp.arange(r, dtype=jnp.int32),  # each row's index in the output
        **{k: buffer(v, t, r) for k, (v, t) in fills.items()},
    )

    def cond(stage):
        def c(s):
            go = (s["i"] < stage.limit) & ~jnp.all(s["done"])
            if stage.shrink_to:
                go &= jnp.sum(~s["done"]) > stage.shrink_to
            return go

        return c

    def body(s):
        active = ~s["done"]
        logits, cache = apply(
            s["token"][:, None], s["position"][:, None], active[:, None].astype(jnp.int32), cache=s["cache"]
        )
        i = s["i"]
        if temperature == 0:
            tok, lp, mlp = sample_token_with_logprobs(logits[:, -1], None, 0.0, top_k, top_p)
        else:  # row key folded with the step: the same draw whatever row or stage the sequence is in
            step_keys = jax.vmap(jax.random.fold_in, (0, None))(s["keys"], i)
            u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(step_keys)
            tok, lp, mlp = sample_token_by_inverse_cdf(logits[:, -1], u, temperature, top_k, top_p)
        tok = jnp.where(active, tok, pad_id)
        finished = jnp.any(tok[:, None] == eos[None, :], axis=-1) if eos_ids else jnp.zeros_like(active)
        tail = s["tail"]
        if stops is not None:  # shift the last-L-tokens window and compare with every stop sequence
            tail = jnp.concatenate([tail[:, 1:], tok[:, None]], axis=1)  # [B, L]
            hit = (tail[:, None, :] == stops[None]) | (stops[None] < 0)  # [B, S, L]
            finished |= jnp.any(jnp.all(hit, axis=-1), axis=-1)

        def put(buf, value):
            return jax.lax.dynamic_update_slice(buf, value[:, None].astype(buf.dtype), (0, i))

        return dict(
            s,
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

    def flush(out, s):  # the stage's rows into the full output (rows are distinct: a permutation subset)
        return {k: out[k].at[s["row"]].set(s[k]) for k in BUFFERS}

    for j, stage in enumerate(plan):
        if j and base + stage.slots > s["cache"]["mask"].shape[1]:  # a longer cache: one copy per phase
            s = dict(s, cache=pin(_grow_cache(s["cache"], axes, base + stage.slots)))
        if j and stage.rows < plan[j - 1].rows:  # compaction: running rows first, the rest written out
            out = flush(out, s)
            order = jnp.argsort(s["done"], stable=True)[: stage.rows]
            s = {
                k: (
                    v
                    if k == "i" or v is None
                    else pin(_take_rows(v, axes, order))
                    if k == "cache"
                    else _constrain(jnp.take(v, order, axis=0), mesh, ("batch",) + (None,) * (v.ndim - 1))
                )
                for k, v in s.items()
            }
        s = jax.lax.while_loop(cond(stage), body, s)
    out = flush(out, s)
    result = GenerateOutput(
        tokens=out["tokens"],
        logprobs=out["logprobs"],
        model_logprobs=out["model_logprobs"],
        mask=out["mask"],
        lengths=out["mask"].sum(-1).astype(jnp.int32),
    )
    return result if not keep_cache else (result, s["cache"])


def _validate(max_new_tokens, temperature, top_k, top_p, eos_ids, stop_sequences):
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    _check(temperature, top_k, top_p)
    eos_ids = (eos_ids,) if isinstance(eos_ids, int) else tuple(int(e) for e in (eos_ids or ()))
    stop_sequences = tuple(tuple(int(t) for t in s) for s in stop_sequences)
    return eos_ids, stop_sequences


def _program(model, *, max_new_tokens, temperature, top_k, top_p, eos_ids, stop_sequences, **settings):
    """`_generate` with its settings checked and bound (what `make_generate_fn` and `make_continue_fn` jit)."""
    eos_ids, stop_sequences = _validate(max_new_tokens, temperature, top_k, top_p, eos_ids, stop_sequences)
    return functools.partial(
        _generate,
        model,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=eos_ids,
        stop_sequences=stop_sequences,
        **settings,
    )


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
    num_samples: int = 1,
    compact: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    param_shardings=None,
    donate_prompts=False,
    keep_cache=False,
):
    """Returns a jitted `gen(params, prompt_ids, prompt_segment_ids, rng, row_ids=None) -> GenerateOutput`
    (`row_ids` by keyword); with `keep_cache` (and compact=False), `(GenerateOutput, cache)`: the rows'
    KV, which `make_continue_fn` continues (a multi-turn episode).

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
      num_samples: G samples of every prompt: U prompts give R = U·G rows, rows [i·G, (i+1)·G) answering
        prompt i. Each prompt is prefilled once and its KV copied to its G rows (a GRPO / RLOO group, online
        DPO's n answers). Under a mesh, U must divide by the batch axes' devices.
      compact: continuous batching of a fixed batch: once only 1/COMPACT_FACTOR of the rows are still
        running, they are gathered (cache included) into a batch that much smaller and the decode goes
        on there, up to COMPACT_LEVELS times. The decode's work then follows the sum of the lengths, not
        rows × the longest. Each size is one more compiled copy of the decode step; results are the same
        (rows keep their ids, so their keys).
      mesh: with a mesh, the batch (prompts and outputs) is sharded over ("data", "fsdp"), the KV cache
        over the batch and, where they divide, kv heads over "tensor", and the params by
        `param_shardings` (default: the model's logical axes under `sharding.LOGICAL_AXIS_RULES`,
        i.e. the training layout; no copy is made when params already have it).
      donate_prompts: donate the prompt arrays.

    The rng may be a typed key or a raw uint32 key (or None for greedy decoding). Row r's token at step i
    is drawn with `fold_in(fold_in(rng, row_ids[r]), i)` (row_ids default to 0..R-1), so a sequence's
    sample depends on its id alone: not on the mesh, the compaction or the other rows of the batch.
    """
    fn = _program(
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
        num_samples=int(num_samples),
        compact=bool(compact),
        mesh=mesh,
        keep_cache=bool(keep_cache),
    )
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    donate = (1, 2) if donate_prompts else ()
    if mesh is None or keep_cache:  # (the cache's layout is pinned inside: `_constrain_cache`)
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
        fn,
        in_shardings=(param_shardings, batch, batch, replicated),
        out_shardings=out,
        donate_argnums=donate,
    )


def make_continue_fn(
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
):
    """The next turn of multi-turn episodes, on the KV of the turns before (no re-prefill):
    `cont(params, cache, start_positions, ids, segment_ids, rng, row_ids) -> (GenerateOutput, cache)`.

    `cache`: what `make_generate_fn(keep_cache=True)` or an earlier `cont` returned ([R] rows);
    `ids`, `segment_ids` [R, A]: each row's appended tokens, left-padded (a row with none is done and
    stays padding), starting with the row's last sampled token, which the sampler emitted but never fed
    back; `start_positions` [R]: that token's position. Only these A columns are prefilled; the cache
    grows by A + max_new_tokens slots. Sampling as `make_generate_fn` (settings, keys by `row_ids`)."""
    fn = _program(
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
        compact=False,
        mesh=mesh,
        keep_cache=True,
    )

    def cont(params, cache, start_positions, ids, segment_ids, rng, row_ids=None):
        return fn(params, ids, segment_ids, rng, row_ids, cache=cache, start_positions=start_positions)

    return jax.jit(cont)


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
        "num_samples",
        "compact",
    ),
)
def _generate_jit(model, params, prompt_ids, prompt_segment_ids, rng, row_ids, **kwargs):
    return _generate(model, params, prompt_ids, prompt_segment_ids, rng, row_ids, mesh=None, **kwargs)


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
    num_samples: int = 1,
    compact: bool = True,
    row_ids=None,
) -> GenerateOutput:
    """Samples up to `max_new_tokens` per row of a left-padded prompt batch (see `make_generate_fn`).

    Args:
      prompt_ids: [B, P] int left-padded prompts.
      prompt_segment_ids: [B, P] int (or bool mask), 0 on padding, non-zero on real tokens.
      rng: PRNG key (unused when temperature == 0).
      row_ids: [B · num_samples] int, each output row's sequence id (its sampling key); default 0..R-1.

    Jitted and cached on (model, settings, shapes); params keep whatever sharding they have.
    """
    eos_ids, stop_sequences = _validate(max_new_tokens, temperature, top_k, top_p, eos_ids, stop_sequences)
    return _generate_jit(
        model,
        params,
        jnp.asarray(prompt_ids),
        jnp.asarray(prompt_segment_ids),
        rng,
        None if row_ids is None else jnp.asarray(row_ids, jnp.int32),
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        eos_ids=eos_ids,
        pad_id=int(pad_id),
        stop_sequences=stop_sequences,
        cache_dtype=cache_dtype,
        cache_buckets=int(cache_buckets),
        num_samples=int(num_samples),
        compact=bool(compact),
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
