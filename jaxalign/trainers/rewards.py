"""Scoring rollouts for the RL trainers: log-probs, values and rewards of sampled completions.

A rollout is a left-padded prompt batch plus what the sampler generated after it (R rows):

    prompt_ids, prompt_segment_ids   [R, P] int32   (0 on left padding)
    tokens, mask                     [R, N] int32   (mask 1 on generated tokens, EOS included)

Device side (pure functions, jitted by the callers): the sequence prompt ++ completion goes through a
model once; position P-1+n of its output is what the model says before generated token n, so
`completion_logits` [R, N, V] predicts `tokens` and `completion_values` [R, N] is the critic's value of the
state in which token n is chosen. The reward model reads prompt ++ completion at its last real token (the
EOS when the completion stopped), as it was trained to (`trainers.objectives.make_reward_loss`).

Host side: completions are decoded with special tokens kept (so `<|eos|>` and user-turn tokens are
visible to the reward function) and scored by a Python function `(answer, completion_text) -> float`
named "package.module:function" in the config, e.g. `jaxalign.data.embedded:reward`.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import losses
from jaxalign.models import last_token_scores
from jaxalign.sampling import decode_completions, prompt_positions


# ----------------------------------------------------------------------------------------------------
# Device side.
# ----------------------------------------------------------------------------------------------------
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


def make_score_fn(policy_model, eos_ids, *, value_model=None, reward_model=None, old_logprobs=True):
    """Returns `score(params, ref_params, rm_params, rollout) -> dict` of the forward passes that a rollout
    needs before the update, none of them differentiated:

      old_logprobs [R, N]   log π_θ_old of the sampled tokens, from a forward pass of the parameters that
                            sampled (not the sampler's own numbers: decode-with-cache and a full forward
                            differ by float error, and the ratio π_θ/π_θ_old must be exactly 1 before the
                            first update so the clipping sees only real policy change);
      ref_logprobs [R, N]   log π_ref (when ref_params is not None), the same function on the frozen params,
                            so KL = 0 exactly while the policy equals the reference;
      values [R, N]         the critic's values (with a value model; `params["value"]`);
      rm_score [R]          the reward model's score (with a reward model);
      stopped [R] float32   1 if the completion ended with an EOS id.

    `params` is the train state's `{"policy": ..., ["value": ...]}`. `old_logprobs=False` leaves out that
    pass: with one update per rollout the update's own (detached) log-probs are π_θ_old (TRL does the same).
    """
    eos_ids = tuple(int(e) for e in eos_ids)

    def score(params, ref_params, rm_params, rollout):
        out = {}
        if old_logprobs:
            out["old_logprobs"], _ = completion_logprobs(policy_model, params["policy"], rollout)
        if ref_params is not None:
            out["ref_logprobs"], _ = completion_logprobs(policy_model, ref_params, rollout)
        if value_model is not None:
            out["values"] = completion_values(value_model, params["value"], rollout)
        if reward_model is not None:
            out["rm_score"] = reward_model_scores(reward_model, rm_params, rollout)
        out["stopped"] = stopped(rollout["tokens"], rollout["mask"], eos_ids).astype(jnp.float32)
        return jax.lax.stop_gradient(out)

    return score


# ----------------------------------------------------------------------------------------------------
# Host side.
# ----------------------------------------------------------------------------------------------------
def gather(tree):
    """Global (batch-sharded) arrays -> numpy with every row, on every host."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def local_rows(x):
    """This host's contiguous slice of a global [R, ...] numpy array (the data iterator's layout)."""
    per = x.shape[0] // jax.process_count()
    return x[jax.process_index() * per : (jax.process_index() + 1) * per]


def decode(tokenizer, tokens, mask):
    """[R, N] numpy tokens/mask -> R strings, special tokens kept (EOS visible), padding dropped."""
    return decode_completions(
        tokenizer, types.SimpleNamespace(tokens=tokens, mask=mask), skip_special_tokens=False
    )


def rollout_metrics(rollout):
    """Means over the rollout's completions of what every RL objective reports (device side)."""
    mask = rollout["mask"].astype(jnp.float32)
    out = {
        "completion/length": jnp.mean(jnp.sum(mask, axis=-1)),
        "completion/stop_rate": jnp.mean(rollout["stopped"]),
    }
    if "env_reward" in rollout:
        out["reward/env"] = jnp.mean(rollout["env_reward"])
    if "correct" in rollout:
        out["reward/accuracy"] = jnp.mean(rollout["correct"])
    return out


def host_rewards(texts, answers, reward_fn=None, check_fn=None):
    """Per-completion numbers computed in Python: {"env_reward": [R], "correct": [R]} float32 numpy (a key
    is absent when its function is None). `answers[i]` is row i's reference answer ("" when none)."""
    out = {}
    if reward_fn is not None:
        out["env_reward"] = np.asarray([float(reward_fn(a, t)) for a, t in zip(answers, texts)], np.float32)
    if check_fn is not None:
        out["correct"] = np.asarray([float(bool(check_fn(a, t))) for a, t in zip(answers, texts)], np.float32)
    return out
