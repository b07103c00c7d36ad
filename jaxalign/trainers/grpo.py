"""GRPO (Shao et al. 2024) and RLOO (Ahmadian et al. 2024) for language models: the update. No critic.

Each prompt of a step is sampled `group_size` = G times (rows [g·G, (g+1)·G) share prompt g); the
completions' sequence rewards become advantages relative to their group:

    score_i  = reward(prompt, completion_i) - missing_eos_penalty · 1[completion_i never stopped]
    "grpo":  A_i = (score_i - mean_group) / (std_group + 1e-4)       (losses.group_advantages;
             `scale_rewards=False` drops the division: Dr. GRPO)
    "rloo":  A_i = score_i - mean of the other G-1 scores of the group (losses.rloo_advantages)

then `num_iterations` passes (GRPO's μ) over the rollout in `num_minibatches` shuffled minibatches, each an
optimiser update of `losses.grpo_loss`: the clipped ratio to the sampling policy plus β · k3 KL to the
frozen reference, per token (β = 0 leaves the KL term out). With one iteration and one minibatch the ratio
is 1 in value and this is plain REINFORCE with a group baseline (and TRL's RLOOTrainer for "rloo").

The GRPO family (presets in configs/grpo.py:<variant>):
    DAPO     score_i += overlong_penalty(|y_i|) (`overlong_cache` > 0: linear over the budget's last
             tokens); with `dynamic_sampling`, rows of groups whose scores are all equal get weight 0
             in the loss (losses.nonconstant_groups; dropped, not resampled); ε_high > ε_low.
    Dr.GRPO  `scale_rewards=False`, `loss_reduction="constant"` (÷ rows × max_new_tokens).
    GSPO     `importance_level="sequence"`: s_i = exp(mean_t (log π_θ - log π_old)), clipped per answer.
    CISPO, SAPO, GMPO, BNPO   `loss_type`: the per-token objective (losses.grpo_loss has each formula).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign import losses
from jaxalign.sampling.scoring import completion_logprobs, merge_units
from jaxalign.trainers.algorithm import declare
from jaxalign.trainers.off_policy import off_policy_weights
from jaxalign.trainers.rewards import rollout_metrics
from jaxalign.errors import config_fail as _fail

# The advantage estimators: name -> (scores [R], hp) -> advantages [R] (groups of `group_size` contiguous).
ADVANTAGES = {
    "grpo": lambda score, hp: losses.group_advantages(
        score, int(hp["group_size"]), normalize_std=bool(hp["scale_rewards"])
    ),
    "rloo": lambda score, hp: losses.rloo_advantages(score, int(hp["group_size"])),
}


def validate(hp):
    """`config.grpo` checks across fields and of names (each number's own range: the registry's)."""
    if hp.advantage not in ADVANTAGES:
        _fail("grpo.advantage", hp.advantage, f"expected one of {list(ADVANTAGES)}")
    if hp.clip_eps_high and hp.clip_eps_high < 0:
        _fail("grpo.clip_eps_high", hp.clip_eps_high, "must be >= 0 (0 = clip_eps)")
    if hp.loss_reduction not in losses.REDUCTIONS:
        _fail("grpo.loss_reduction", hp.loss_reduction, f"expected one of {list(losses.REDUCTIONS)}")
    if hp.importance_level not in losses.IMPORTANCE_LEVELS:
        _fail(
            "grpo.importance_level", hp.importance_level, f"expected one of {list(losses.IMPORTANCE_LEVELS)}"
        )
    if hp.loss_type not in losses.LOSS_TYPES:
        _fail("grpo.loss_type", hp.loss_type, f"expected one of {list(losses.LOSS_TYPES)}")
    if hp.loss_type == "bnpo" and hp.loss_reduction != "token":
        _fail(
            "grpo.loss_reduction",
            hp.loss_reduction,
            "loss_type='bnpo' is the token mean over the batch: use 'token'",
        )
    if hp.loss_type == "gmpo" and hp.importance_level != "token":
        _fail(
            "grpo.importance_level",
            hp.importance_level,
            "loss_type='gmpo' takes the token ratios: use 'token'",
        )
    if hp.overlong_cache < 0:
        _fail("grpo.overlong_cache", hp.overlong_cache, "must be >= 0 (0 = no overlong penalty)")
    if hp.overlong_penalty < 0:
        _fail("grpo.overlong_penalty", hp.overlong_penalty, "must be >= 0")
    if hp.advantage == "rloo" and not hp.scale_rewards:
        _fail(
            "grpo.scale_rewards", hp.scale_rewards, "applies to advantage='grpo' only; leave it True for rloo"
        )


def on_policy(hp):
    """One optimiser update per rollout: no separate pass for the sampling policy's log-probs is needed."""
    return int(hp["num_iterations"]) * int(hp["num_minibatches"]) == 1


def group_size(hp):
    """Samples per prompt."""
    return int(hp["group_size"])


def rows_per_prompt(hp):
    """Rows of the prepared batch per prompt: its G answers."""
    return int(hp["group_size"])


def epochs(hp):
    """Passes over each rollout batch (GRPO's μ)."""
    return int(hp["num_iterations"])


def num_minibatches(hp):
    """Shuffled minibatches per pass, one optimiser update each."""
    return int(hp["num_minibatches"])


def kl_coef(hp):
    """The initial KL coefficient (beta; 0 = no reference model)."""
    return float(hp["beta"])


def uses_reference(hp):
    return float(hp["beta"]) > 0


def needs_old_logprobs(hp):
    """A separate pass for the sampling policy's log-probs (not when old = current)."""
    return not on_policy(hp)


def advantages_of(score, hp):
    """[R] sequence scores -> [R] advantages (`ADVANTAGES[hp["advantage"]]`, see the module docstring)."""
    return ADVANTAGES[hp["advantage"]](score, hp)


def make_loss_fn(policy_model, value_model, hp):
    """Returns `loss_fn(params, frozen, minibatch) -> (loss, metrics)` for the loop's step: `losses.grpo_loss`
    per token, with π_θ_old the rollout's `old_logprobs` or, with one update per rollout (`on_policy`),
    the update's own detached log-probs. `frozen` is unused (the reference's log-probs are in the rollout).
    """
    del value_model  # CRITIC = False
    beta = float(hp["beta"])
    clip_high = hp["clip_eps_high"] or None

    def loss_fn(params, frozen, mb):
        del frozen
        mb = merge_units(mb)  # a packed rollout's units -> one rollout
        mask = mb["mask"]
        logprobs, logits = completion_logprobs(policy_model, params["policy"], mb)
        # One update per rollout (`on_policy`): the parameters that sampled are these, π_θ_old = sg(π_θ).
        old = mb["old_logprobs"] if "old_logprobs" in mb else jax.lax.stop_gradient(logprobs)
        token_weights, is_metrics = off_policy_weights(old, mb, hp)  # a stale rollout (max_staleness > 0)
        loss, metrics = losses.grpo_loss(
            logprobs,
            old,
            mb["ref_logprobs"] if beta > 0 else None,
            mb["advantages"],
            mask,
            clip_eps=hp["clip_eps"],
            beta=beta,
            reduction=hp["loss_reduction"],
            clip_eps_high=clip_high,
            importance_level=hp["importance_level"],
            weights=mb.get("weights"),  # DAPO's dynamic sampling: 0 for groups without signal
            token_weights=token_weights,
            loss_type=hp["loss_type"],
            sapo_temperatures=(float(hp["sapo_temperature_pos"]), float(hp["sapo_temperature_neg"])),
        )
        metrics = {("kl/k3" if k == "kl" else k): v for k, v in metrics.items()} | is_metrics
        metrics["policy/entropy"] = losses.masked_mean(losses.token_entropy(logits), mask)
        if "old_logprobs" not in mb and beta > 0:  # KL of the sampling policy to the reference, Σ_t
            metrics["kl/sequence"] = jnp.mean(jnp.sum((old - mb["ref_logprobs"]) * mask, -1))
        return loss, metrics

    return loss_fn


def prepare(rollout, kl_coef, hp):
    """A scored rollout -> (the batch the updates read: + advantages; rollout metrics; β unchanged).

    `rollout`: prompt_ids, prompt_segment_ids, tokens, mask, and from the score step old_logprobs (unless
    `on_policy`), stopped, ref_logprobs (when beta > 0), plus `score` [R].
    """
    g = int(hp["group_size"])
    mask = rollout["mask"].astype(jnp.float32)  # [R, N]
    score = rollout["score"] - hp["missing_eos_penalty"] * (1.0 - rollout["stopped"])  # [R]
    batch = dict(rollout)
    extra = {}
    if hp["dynamic_sampling"]:  # on the task's reward, before the length penalty (as DAPO)
        batch["weights"] = losses.nonconstant_groups(score, g)
        extra["reward/kept_frac"] = jnp.mean(batch["weights"])
    if hp["overlong_cache"]:
        penalty = losses.overlong_penalty(
            jnp.sum(mask, axis=-1),
            max_length=int(hp["max_new_tokens"]),
            cache_length=int(hp["overlong_cache"]),
            penalty=float(hp["overlong_penalty"]),
        )
        extra["reward/overlong_penalty"] = jnp.mean(penalty)
        score = score + penalty
    batch["advantages"] = advantages_of(score, hp)  # [R]
    groups = score.reshape(-1, g)  # [R/G, G]
    metrics = {
        **extra,
        "reward/score": jnp.mean(score),
        "reward/group_std": jnp.mean(jnp.std(groups, axis=1)),
        # Groups whose completions all scored the same have zero advantage: no learning signal.
        "reward/zero_std_frac": jnp.mean((jnp.max(groups, 1) == jnp.min(groups, 1)).astype(jnp.float32)),
        **rollout_metrics(rollout),
    }
    if "ref_logprobs" in rollout and "old_logprobs" in rollout:  # sampling policy vs reference, Σ_t
        metrics["kl/sequence"] = jnp.mean(
            jnp.sum((rollout["old_logprobs"] - rollout["ref_logprobs"]) * mask, -1)
        )
    return batch, metrics, kl_coef


ALGORITHM = declare(__name__, "grpo", critic=False, packs=True, corrects=True)
