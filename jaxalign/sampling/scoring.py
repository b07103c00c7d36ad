"""Forward passes over sampled completions: log-probs, critic values, reward-model scores, stops.

A rollout is a left-padded prompt batch plus what the sampler generated after it (R rows):

    prompt_ids, prompt_segment_ids   [R, P] int32   (0 on left padding)
    tokens, mask                     [R, N] int32   (mask 1 on generated tokens, EOS included)
    context (multi-turn episodes)    [R, N] int32   (1 on every real token: the model's turns and what
                                                     the environment appended, which has mask 0)

The sequence prompt ++ completion goes through a model once; position P-1+n of its output is what the
model says before generated token n, so `completion_logits` [R, N, V] predicts `tokens` and
`completion_values` [R, N] is the critic's value of the state in which token n is chosen. The reward
model reads prompt ++ completion at its last real token (the EOS when the completion stopped), as it was
trained to (`trainers.objectives.make_reward_loss`). Pure functions: the RL trainers and evaluation jit
them.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxalign import losses, models
from jaxalign.models import last_token_scores
from jaxalign.sampling.generate import cache_axes, prompt_positions, repeat_cache_rows


def sequence_inputs(prompt_ids, prompt_segment_ids, tokens, mask):
    """Prompt ++ completion as model inputs: (input_ids, positions, segment_ids), each [R, P+N-1] int32.

    The last generated token is never an input (nothing is predicted after it); segment id 1 on real
    tokens, 0 on padding on either side, positions from 0 at each row's first real token.
    """
    seq = jnp.concatenate([prompt_ids.astype(jnp.int32), tokens.astype(jnp.int32)], axis=1)  # [R, P+N]
    seg = jnp.concatenate([prompt_segment_ids != 0, mask != 0], axis=1).astype(jnp.int32)
    pos = prompt_positions(seg)
    return seq[:, :-1], pos[:, :-1], seg[:, :-1]


def real_tokens(rollout):
    """[R, N]: 1 where the completion part holds a token the model sees (`context` for a multi-turn
    episode, whose environment tokens are seen but not trained on; else `mask`)."""
    return rollout["context"] if "context" in rollout else rollout["mask"]


PACKED = ("packed_ids", "packed_positions", "packed_segment_ids")  # [rows, T]; "packed_index" is [R, N]
SHARED = ("shared_prompt_ids", "shared_prompt_segment_ids")  # [R / G, P]: each group's prompt, once


def _apply(model, params, *args, **kwargs):
    return model.apply({"params": params}, *args, **kwargs)


def grouped_outputs(model, params, rollout):
    """[R, N, ...] model outputs predicting each generated token, each group's prompt run once.

    `rollout["shared_prompt_ids"]` [U, P] holds the prompt of rows [i·G, (i+1)·G). The prompts but for
    their last token go through the model into a KV cache (as the sampler's prefill does), the cache is
    given to the G rows, and each row's last prompt token + completion but its last token (N inputs) runs
    on it: U·(P-1) + R·N positions instead of R·(P+N-1). Gradients reach the prompt's keys and values from
    all G completions, so loss and gradient equal the padded rows' (`test_packed_rollouts.py`)."""
    ids, seg = rollout["shared_prompt_ids"].astype(jnp.int32), rollout["shared_prompt_segment_ids"]
    u, p = ids.shape
    r, n = rollout["tokens"].shape
    g = r // u
    cfg = model.config
    pos = prompt_positions(seg)
    cache = models.init_cache(cfg, u, p + n - 1)
    if p > 1:
        _, cache = _apply(
            model,
            params,
            ids[:, :-1],
            pos[:, :-1],
            (seg[:, :-1] != 0).astype(jnp.int32),
            cache=cache,
            hidden_only=True,
        )
    cache = repeat_cache_rows(cache, cache_axes(cfg, jnp.dtype(cfg.dtype)), g)
    rep = lambda x: jnp.repeat(x, g, axis=0)  # noqa: E731
    inputs = jnp.concatenate([rep(ids[:, -1:]), rollout["tokens"][:, :-1].astype(jnp.int32)], axis=1)
    real = jnp.concatenate([rep(seg[:, -1:] != 0), real_tokens(rollout)[:, :-1] != 0], axis=1)
    positions = rep(pos[:, -1:]) + jnp.arange(n, dtype=jnp.int32)[None]
    out, _ = _apply(model, params, inputs, positions, real.astype(jnp.int32), cache=cache)
    return out  # [R, N, ...]


def completion_outputs(model, params, rollout):
    """The model's outputs over prompt ++ completion at the positions that predict each generated token:
    [R, N, ...] (logits for a `Transformer`, scores for a `ScalarHeadModel`).

    Three layouts, the same values (each test-checked): a rollout with the `data.batching.pack_rollout`
    keys ("packed_*") goes through the model as its packed rows (no left padding of prompts, no right
    padding of short completions) and the outputs are gathered back to [R, N]; one with "shared_prompt_*"
    runs each group's prompt once (`grouped_outputs`); otherwise each row runs as it is, padded to
    P + N - 1."""
    if "packed_index" in rollout:
        out = _apply(model, params, *(rollout[k] for k in PACKED))  # [rows, T, ...]
        flat = out.reshape((-1,) + out.shape[2:])
        return jnp.take(flat, rollout["packed_index"], axis=0)  # [R, N, ...]
    if SHARED[0] in rollout:
        return grouped_outputs(model, params, rollout)
    p = rollout["prompt_ids"].shape[1]
    ids, pos, seg = sequence_inputs(
        rollout["prompt_ids"], rollout["prompt_segment_ids"], rollout["tokens"], real_tokens(rollout)
    )
    return _apply(model, params, ids, pos, seg)[:, p - 1 :]  # [R, N, ...]


def split_units(batch, perm):
    """A rollout ([R, ...] rows; when packed, also [U·rows, T] packed arrays) -> the update's batch in
    units: row arrays [U, R/U, ...] in the order of `perm` [U, R/U] (a packed rollout's rows each unit was
    packed from), packed arrays [U, rows, T], "packed_index" relative to its unit's rows, and "unit" [U]
    (0..U-1), which marks the layout. The inverse of `merge_units`."""
    u, per = perm.shape
    flat = perm.reshape(-1)
    out = {"unit": jnp.arange(u, dtype=jnp.int32)}
    rows = batch["packed_ids"].shape[0] // u if "packed_ids" in batch else 0
    if SHARED[0] in batch:  # whole groups in each unit: the groups of each unit's rows, in their order
        g = batch["tokens"].shape[0] // batch[SHARED[0]].shape[0]
        groups = flat[::g] // g
    for k, v in batch.items():
        if k in SHARED:
            out[k] = jnp.take(v, groups, axis=0).reshape((u, per // g) + v.shape[1:])
        elif k in PACKED:
            out[k] = v.reshape((u, rows) + v.shape[1:])
        elif k == "packed_index":
            offset = (jnp.arange(u, dtype=jnp.int32) * rows * batch["packed_ids"].shape[1])[:, None, None]
            out[k] = jnp.take(v, flat, axis=0).reshape(u, per, -1) - offset
        else:
            out[k] = jnp.take(v, flat, axis=0).reshape((u, per) + v.shape[1:])
    return out


def merge_units(batch):
    """An update's minibatch of units (`split_units`: [u, r, ...] row arrays, [u, rows, T] packed arrays)
    -> one rollout ([u·r, ...], [u·rows, T], "packed_index" pointing into the merged rows). A batch not in
    units is returned as it is."""
    if "unit" not in batch:
        return batch
    out = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items() if k not in ("unit", "packed_index")}
    if "packed_index" in batch:
        u, rows, t = batch["packed_ids"].shape
        offset = (jnp.arange(u, dtype=jnp.int32) * rows * t)[:, None, None]
        out["packed_index"] = (batch["packed_index"] + offset).reshape(
            (-1,) + batch["packed_index"].shape[2:]
        )
    return out


def completion_logits(model, params, rollout):
    """[R, N, V] float32 logits predicting each generated token (teacher-forced, temperature 1)."""
    return completion_outputs(model, params, rollout)


def completion_logprobs(model, params, rollout):
    """[R, N] float32 log π(token_n | prompt, tokens_<n), 0 where mask is 0. Also returns the logits."""
    logits = completion_logits(model, params, rollout)
    mask = rollout["mask"].astype(jnp.float32)
    return losses.token_logprobs(logits, rollout["tokens"]) * mask, logits


def completion_values(value_model, params, rollout):
    """[R, N] float32 critic values V(prompt, tokens_<n), 0 where mask is 0 (a `ScalarHeadModel`)."""
    scores = completion_outputs(value_model, params, rollout)
    return scores * rollout["mask"].astype(jnp.float32)


def reward_model_scores(reward_model, params, rollout):
    """[R] float32: the reward model's score at the last real token of prompt ++ completion."""
    ids = jnp.concatenate([rollout["prompt_ids"], rollout["tokens"]], axis=1).astype(jnp.int32)
    seg = jnp.concatenate([rollout["prompt_segment_ids"] != 0, real_tokens(rollout) != 0], axis=1)
    seg = seg.astype(jnp.int32)
    scores = reward_model.apply({"params": params}, ids, prompt_positions(seg), seg)  # [R, P+N]
    return last_token_scores(scores, seg)


def stopped(tokens, mask, eos_ids):
    """[R] bool: the completion's last generated token is an EOS id (the sampler stops a row there; a
    multi-turn episode's last turn ended with it)."""
    eos = jnp.asarray(eos_ids, jnp.int32)
    n = mask.shape[-1]
    last = (n - 1) - jnp.argmax(jnp.flip(mask != 0, axis=-1), axis=-1)  # the last generated position
    tok = jnp.take_along_axis(tokens, last[..., None], axis=-1)[..., 0]
    return jnp.any(tok[..., None] == eos, axis=-1) & jnp.any(mask != 0, axis=-1)
