"""Device-side pieces of evaluation: forward passes that turn rollouts and text into per-token numbers.

Each `make_*` factory returns a jitted function of (params, arrays); the arrays may be sharded global
arrays (the batch over ("data", "fsdp")) and the params keep the sharding they were loaded with.
No config crosses the jit boundary and no maths lives here beyond `jaxalign.losses` calls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign import losses
from jaxalign.sampling import scoring


def _rollout(prompt_ids, prompt_segment_ids, tokens, mask):
    return {
        "prompt_ids": prompt_ids,
        "prompt_segment_ids": prompt_segment_ids,
        "tokens": tokens,
        "mask": mask,
    }


def make_completion_logprobs_fn(model):
    """`fn(params, prompt_ids, prompt_segment_ids, tokens, mask) -> [B, N] float32`: log p of each
    generated token under `model` (teacher-forced over prompt + completion, temperature 1), 0 where
    `mask` is 0 (`sampling.scoring.completion_logprobs`, as the RL trainers score). The same function for
    the policy and the reference, so a model against itself gives exactly 0 KL.

    Args:
      prompt_ids, prompt_segment_ids: [B, P] left-padded prompts; tokens, mask: [B, N] from the sampler.
    """
    return jax.jit(lambda params, *rollout: scoring.completion_logprobs(model, params, _rollout(*rollout))[0])


def make_reward_fn(reward_model):
    """`fn(params, prompt_ids, prompt_segment_ids, tokens, mask) -> [B] float32`: the reward model's
    score (a `ScalarHeadModel`) at the last real token of prompt + completion, the token a Bradley-Terry
    reward model is trained to read (the EOS when the completion stopped)."""
    return jax.jit(
        lambda params, *rollout: scoring.reward_model_scores(reward_model, params, _rollout(*rollout))
    )


def make_nll_fn(model):
    """`fn(params, batch) -> (nll_sum, num_tokens)` float32 scalars over a CLM batch (the data
    pipeline's keys): sum_t m_t (-log p(y_t)) and sum_t m_t. Summed, not averaged, so that batches
    (and hosts) add up to the token mean over the whole set."""

    def fn(params, batch):
        logits = model.apply({"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"])
        lp = losses.token_logprobs(logits, batch["targets"])
        m = batch["loss_mask"].astype(jnp.float32)
        return -jnp.sum(lp * m), jnp.sum(m)

    return jax.jit(fn)
