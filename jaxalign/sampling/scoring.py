"""Forward passes over sampled completions: log-probs, critic values, reward-model scores, stops.

A rollout is a left-padded prompt batch plus what the sampler generated after it (R rows):

    prompt_ids, prompt_segment_ids   [R, P] int32   (0 on left padding)
    tokens, mask                     [R, N] int32   (mask 1 on generated tokens, EOS included)

The sequence prompt ++ completion goes through a model once; position P-1+n of its output is what the
model says before generated token n, so `completion_logits` [R, N, V] predicts `tokens` and
`completion_values` [R, N] is the critic's value of the state in which token n is chosen. The reward
model reads prompt ++ completion at its last real token (the EOS when the completion stopped), as it was
trained to (`trainers.objectives.make_reward_loss`). Pure functions: the RL trainers and evaluation jit
them.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxalign import losses
from jaxalign.models import last_token_scores
from jaxalign.sampling.generate import prompt_positions


def sequence_inputs(prompt_ids, prompt_segment_ids, tokens, mask):
    """Prompt ++ completion as model inputs: (input_ids, positions, segment_ids), each [R, P+N-1] int32.

    The last generated token is never an input (nothing is predicted after it); segment id 1 on real
    tokens, 0 on padding on either side, positions from 0 at each row's first real token.
    """
    seq = jnp.concatenate([prompt_ids.astype(jnp.int32), tokens.astype(jnp.int32)], axis=1)  # [R, P+N]
    seg = jnp.concatenate([prompt_segment_ids != 0, mask != 0], axis=1).astype(jnp.int32)
    pos = prompt_positions(seg)
    return seq[:, :-1], pos[:, :-1], seg[:, :-1]


def completion_logits(model, params, rollout):
    """[R, N, V] float32 logits predicting each generated token (teacher-forced, temperature 1)."""
    p = rollout["prompt_ids"].shape[1]
    ids, pos, seg = sequence_inputs(
        rollout["prompt_ids"], rollout["prompt_segment_ids"], rollout["tokens"], rollout["mask"]
    )
    logits = model.apply({"params": params}, ids, pos, seg)  # [R, P+N-1, V]
    return logits[:, p - 1 :]


def completion_logprobs(model, params, rollout):
    """[R, N] float32 log π(token_n | prompt, tokens_<n), 0 where mask is 0. Also returns the logits."""
    logits = completion_logits(model, params, rollout)
    mask = rollout["mask"].astype(jnp.float32)
    return losses.token_logprobs(logits, rollout["tokens"]) * mask, logits


def completion_values(value_model, params, rollout):
    """[R, N] float32 critic values V(prompt, tokens_<n), 0 where mask is 0 (a `ScalarHeadModel`)."""
    p = rollout["prompt_ids"].shape[1]
    ids, pos, seg = sequence_inputs(
        rollout["prompt_ids"], rollout["prompt_segment_ids"], rollout["tokens"], rollout["mask"]
    )
    scores = value_model.apply({"params": params}, ids, pos, seg)  # [R, P+N-1]
    return scores[:, p - 1 :] * rollout["mask"].astype(jnp.float32)


def reward_model_scores(reward_model, params, rollout):
    """[R] float32: the reward model's score at the last real token of prompt ++ completion."""
    ids = jnp.concatenate([rollout["prompt_ids"], rollout["tokens"]], axis=1).astype(jnp.int32)
    seg = jnp.concatenate([rollout["prompt_segment_ids"] != 0, rollout["mask"] != 0], axis=1).astype(
        jnp.int32
    )
    scores = reward_model.apply({"params": params}, ids, prompt_positions(seg), seg)  # [R, P+N]
    return last_token_scores(scores, seg)


def stopped(tokens, mask, eos_ids):
    """[R] bool: the completion emitted an EOS id within the budget (the sampler stops a row there)."""
    eos = jnp.asarray(eos_ids, jnp.int32)
    hit = jnp.any(tokens[..., None] == eos, axis=-1) & (mask != 0)
    return jnp.any(hit, axis=-1)
