"""Scoring rollouts for the RL trainers: what a rollout needs before its advantages.

Device side: `make_score_fn`, one pass of the forward passes over the rollout (the functions themselves,
shared with evaluation, are in `jaxalign/sampling/scoring.py`).

Host side: completions are decoded with special tokens kept (so `<|eos|>` and user-turn tokens are
visible to the reward function) and scored by a Python function `(answer, completion_text) -> float`
named "package.module:function" in the config, e.g. `jaxalign.data.embedded:reward`. An LLM judge
(online DPO's `reward.judge`) reads the prompts as `questions` gives them and the answers decoded without
special tokens.
"""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import ConfigError
from jaxalign.sampling import decode_completions
from jaxalign.sampling.scoring import completion_logprobs, completion_values, reward_model_scores, stopped


# ----------------------------------------------------------------------------------------------------
# Device side.
# ----------------------------------------------------------------------------------------------------
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
def decode(tokenizer, tokens, mask, keep_special=True):
    """[R, N] numpy tokens/mask -> R strings, special tokens kept (EOS visible) unless `keep_special` is
    False, padding dropped."""
    return decode_completions(
        tokenizer, types.SimpleNamespace(tokens=tokens, mask=mask), skip_special_tokens=not keep_special
    )


def questions(tokenizer, prompt_ids, prompt_segment_ids):
    """[P, T] left-padded prompt rows -> P strings for a judge to read: each prompt's tokens (segment id
    > 0) decoded piece by piece between special tokens (BOS, role markers), the non-empty pieces joined by
    newlines. A one-turn chat is its user message; a conversation is its turns, one a line."""
    special = {int(t) for t in getattr(tokenizer, "all_special_ids", ())}
    out = []
    for ids, seg in zip(np.asarray(prompt_ids), np.asarray(prompt_segment_ids)):
        pieces, cur = [], []
        for t in (int(t) for t in ids[seg > 0]):
            if t in special:
                pieces.append(cur)
                cur = []
            else:
                cur.append(t)
        pieces.append(cur)
        texts = (tokenizer.decode(p, skip_special_tokens=True).strip() for p in pieces if p)
        out.append("\n".join(t for t in texts if t))
    return out


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
    is absent when its function is None). `answers[i]` is row i's reference answer ("" when none).

    A function that raises, or a reward that is not a finite number, stops the run with one line
    (`ConfigError`) naming the function, the rollout row, its answer and the completion's start."""
    out = {}
    if reward_fn is not None:
        out["env_reward"] = np.asarray(
            [
                call_checked(reward_fn, "reward.function", a, t, i)
                for i, (a, t) in enumerate(zip(answers, texts))
            ],
            np.float32,
        )
    if check_fn is not None:
        out["correct"] = np.asarray(
            [
                float(call_checked(check_fn, "reward.check_fn", a, t, i, number=False))
                for i, (a, t) in enumerate(zip(answers, texts))
            ],
            np.float32,
        )
    return out


def call_checked(fn, field, answer, text, row, number=True):
    """fn(answer, text) -> a finite float (`number`) or a bool, its failure (an exception, or a value of
    another kind: None, a string) turned into one line that names the function and the row."""
    name = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
    where = f"on rollout row {row} (answer {str(answer)[:40]!r}, completion {text[:60]!r})"
    try:
        value = fn(answer, text)
    except Exception as e:  # the user's function: any failure is theirs to fix
        raise ConfigError(f"config.{field}={name!r}: raised {type(e).__name__}: {e} {where}") from None
    if not number:
        if not isinstance(value, (bool, int, np.bool_, np.integer)) and value not in (0.0, 1.0):
            raise ConfigError(f"config.{field}={name!r}: returned {value!r}, not a bool, {where}")
        return bool(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config.{field}={name!r}: returned {value!r}, not a number, {where}") from None
    if not math.isfinite(value):
        raise ConfigError(f"config.{field}={name!r}: returned {value}, not a finite number, {where}")
    return value
