"""Loss library: pure functions of arrays, each returning `(loss, metrics)`.

`loss` is a float32 scalar and `metrics` a dict of float32 scalars. Every function is jit- and vmap-able,
does no host sync and no Python branching on array values, and computes in float32 whatever the input
dtype. Conventions: `logits[b, t]` predicts `targets[b, t]` (callers shift); masks are 0/1 arrays of the
targets' shape; a sequence log-prob is the masked sum of its token log-probs; masked means divide by
max(sum(mask), 1), so an all-zero mask gives 0, not NaN.

`LOSSES` maps config objective names to loss functions; config validation reads it and `DPO_LOSS_TYPES`.
"""

from jaxalign.losses._utils import REDUCTIONS, masked_mean, masked_sum
from jaxalign.losses.dpo import DPO_LOSS_TYPES, dpo_loss
from jaxalign.losses.grpo import (
    IMPORTANCE_LEVELS,
    LOSS_TYPES,
    group_advantages,
    grpo_loss,
    nonconstant_groups,
    overlong_penalty,
    rloo_advantages,
)
from jaxalign.losses.kl import KL_KINDS, AdaptiveKLState, adaptive_kl_update, init_adaptive_kl, kl_penalty
from jaxalign.losses.kto import kto_loss, kto_reference_point
from jaxalign.losses.off_policy import CORRECTIONS, importance_weights
from jaxalign.losses.lm import clm_loss, nll_loss, sft_loss
from jaxalign.losses.logprobs import (
    TokenStats,
    auto_chunk,
    chunked_token_stats,
    packed_sequence_logprobs,
    packed_sequence_sums,
    scatter_positions,
    sequence_logprobs,
    sequence_sums,
    token_entropy,
    token_logprobs,
    token_mean_nll,
    token_stats,
)
from jaxalign.losses.router import add_loss_gradient, router_losses
from jaxalign.losses.ppo import explained_variance, gae, ppo_clip_loss, token_rewards, value_loss, whiten
from jaxalign.losses.reference_free import orpo_loss, simpo_loss
from jaxalign.losses.reward import reward_bt_loss

# Config objective name -> loss function. The one table config validation reads.
LOSSES = {
    "clm": clm_loss,
    "sft": sft_loss,
    "reward": reward_bt_loss,
    "dpo": dpo_loss,
    "orpo": orpo_loss,
    "simpo": simpo_loss,
    "kto": kto_loss,
    "ppo": ppo_clip_loss,
    "grpo": grpo_loss,
}

__all__ = [
    "LOSSES",
    "DPO_LOSS_TYPES",
    "KL_KINDS",
    "REDUCTIONS",
    "IMPORTANCE_LEVELS",
    "LOSS_TYPES",
    "CORRECTIONS",
    "importance_weights",
    "token_logprobs",
    "sequence_logprobs",
    "packed_sequence_logprobs",
    "masked_mean",
    "masked_sum",
    "TokenStats",
    "token_stats",
    "chunked_token_stats",
    "scatter_positions",
    "router_losses",
    "add_loss_gradient",
    "auto_chunk",
    "sequence_sums",
    "packed_sequence_sums",
    "nll_loss",
    "token_entropy",
    "token_mean_nll",
    "kto_reference_point",
    "explained_variance",
    "token_rewards",
    "clm_loss",
    "sft_loss",
    "reward_bt_loss",
    "dpo_loss",
    "orpo_loss",
    "simpo_loss",
    "kto_loss",
    "ppo_clip_loss",
    "value_loss",
    "gae",
    "whiten",
    "kl_penalty",
    "AdaptiveKLState",
    "init_adaptive_kl",
    "adaptive_kl_update",
    "grpo_loss",
    "group_advantages",
    "rloo_advantages",
    "nonconstant_groups",
    "overlong_penalty",
]
