"""PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022), as TRL's PPOTrainer: the update.

One rollout step, after `rewards.make_score_fn` has produced old log-probs, reference log-probs and the
critic's values of R sampled completions:

    kl_t     = kl_penalty(log π_old(y_t), log π_ref(y_t))                 per generated token ("k1": Δ)
    r_t      = -β kl_t + 1[t = last generated token] · score               score: reward model or function,
                                                                           minus `missing_eos_penalty` if
                                                                           the completion never stopped
    A, R     = gae(r, V_old, mask, γ, λ);   A ← whiten(A)                  (losses.gae, losses.whiten)
    then `ppo_epochs` passes over the rollout in `num_minibatches` shuffled minibatches, each one
    optimiser update of  L = ppo_clip_loss(log π, log π_old, A) + vf_coef · value_loss(V, V_old, R)
    and β ← adaptive_kl_update(β, mean_b Σ_t kl_bt, R, target, horizon) when `ppo.adaptive_kl`.

The policy and the critic are separate networks ({"policy", "value"} in the train state) trained by one
optimiser on the summed loss (TRL's PolicyAndValueWrapper); the policy's gradient never reaches the
critic and vice versa. The epochs × minibatches of updates are the loop's step (`trainers/step.py`);
this module gives it the loss (`make_loss_fn`) and the rollout source its advantages (`prepare`).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxalign import losses
from jaxalign.sampling.scoring import completion_logprobs, merge_units, completion_values
from jaxalign.trainers.algorithm import declare
from jaxalign.trainers.off_policy import off_policy_weights
from jaxalign.trainers.rewards import rollout_metrics
from jaxalign.errors import config_fail as _fail


def group_size(hp):
    del hp
    return 1


def rows_per_prompt(hp):
    """Rows of the prepared batch per prompt: its one answer."""
    del hp
    return 1


def epochs(hp):
    """Passes over each rollout batch."""
    return int(hp["ppo_epochs"])


def num_minibatches(hp):
    """Shuffled minibatches per pass, one optimiser update each."""
    return int(hp["num_minibatches"])


def kl_coef(hp):
    """The initial KL coefficient of the reward's KL penalty."""
    return float(hp["kl_coef"])


def uses_reference(hp):
    del hp
    return True


def needs_old_logprobs(hp):
    del hp
    return True


def validate(hp):
    """`config.ppo` checks (ConfigError naming the field)."""
    if hp.ppo_epochs < 1:
        _fail("ppo.ppo_epochs", hp.ppo_epochs, "must be >= 1")
    if hp.num_minibatches < 1:
        _fail("ppo.num_minibatches", hp.num_minibatches, "must be >= 1")
    for f in ("clip_eps", "value_clip_eps"):
        if not hp[f] > 0:
            _fail(f"ppo.{f}", hp[f], "must be > 0")
    if hp.vf_coef < 0:
        _fail("ppo.vf_coef", hp.vf_coef, "must be >= 0")
    for f in ("gamma", "gae_lambda"):
        if not 0.0 <= hp[f] <= 1.0:
            _fail(f"ppo.{f}", hp[f], "must be in [0, 1]")
    if hp.kl_coef < 0:
        _fail("ppo.kl_coef", hp.kl_coef, "must be >= 0")
    if hp.kl_estimator not in losses.KL_KINDS:
        _fail("ppo.kl_estimator", hp.kl_estimator, f"expected one of {list(losses.KL_KINDS)}")
    if hp.adaptive_kl:
        if not hp.kl_coef > 0:
            _fail("ppo.kl_coef", hp.kl_coef, "the adaptive controller scales β: it must start > 0")
        if not hp.kl_target > 0:
            _fail("ppo.kl_target", hp.kl_target, "must be > 0")
        if not hp.kl_horizon > 0:
            _fail("ppo.kl_horizon", hp.kl_horizon, "must be > 0")


def make_loss_fn(policy_model, value_model, hp):
    """Returns `loss_fn(params, frozen, minibatch) -> (loss, metrics)` for the loop's step:
    ppo_clip_loss + vf_coef · value_loss. `params`: {"policy": ..., "value": ...}; `frozen` is unused
    (the reference's log-probs are in the rollout)."""
    clip_eps, value_clip_eps, vf_coef = hp["clip_eps"], hp["value_clip_eps"], hp["vf_coef"]

    def loss_fn(params, frozen, mb):
        del frozen
        mb = merge_units(mb)  # a packed rollout's units -> one rollout
        mask = mb["mask"]
        logprobs, logits = completion_logprobs(policy_model, params["policy"], mb)
        token_weights, is_metrics = off_policy_weights(mb["old_logprobs"], mb, hp)  # max_staleness > 0
        pg_loss, pg_metrics = losses.ppo_clip_loss(
            logprobs,
            mb["old_logprobs"],
            mb["advantages"],
            mask,
            clip_eps=clip_eps,
            token_weights=token_weights,
        )
        pg_metrics = {**pg_metrics, **is_metrics}
        values = completion_values(value_model, params["value"], mb)
        vf_loss, vf_metrics = losses.value_loss(
            values, mb["values"], mb["returns"], mask, clip_eps=value_clip_eps
        )
        entropy = losses.masked_mean(losses.token_entropy(logits), mask)
        return pg_loss + vf_coef * vf_loss, {**pg_metrics, **vf_metrics, "policy/entropy": entropy}

    return loss_fn


def prepare(rollout, kl_coef, hp):
    """A scored rollout -> (the batch the updates read: + advantages, returns; rollout metrics; the next β).

    `rollout`: prompt_ids, prompt_segment_ids, tokens, mask, old_logprobs, ref_logprobs, values, stopped
    and `score` [R] (the sequence reward). `kl_coef`: β of this rollout; the adaptive controller
    (`ppo.adaptive_kl`) gives the next rollout's from this one's KL.
    """
    gamma, lam, kind = hp["gamma"], hp["gae_lambda"], hp["kl_estimator"]
    mask = rollout["mask"].astype(jnp.float32)  # [R, N]
    kl = losses.kl_penalty(rollout["old_logprobs"], rollout["ref_logprobs"], kind) * mask
    score = rollout["score"] - hp["missing_eos_penalty"] * (1.0 - rollout["stopped"])  # [R]
    beta = kl_coef
    token_rewards = losses.token_rewards(score, kl, mask, beta)  # [R, N]
    advantages, returns = losses.gae(token_rewards, rollout["values"], mask, gamma=gamma, lam=lam)
    if hp["whiten_advantages"]:
        advantages = losses.whiten(advantages, mask) * mask
    seq_kl = jnp.sum(kl, axis=-1)  # [R]
    mean_kl = jnp.mean(seq_kl)
    new_beta = beta
    if hp["adaptive_kl"]:
        new_beta = losses.adaptive_kl_update(
            losses.AdaptiveKLState(beta),
            mean_kl,
            mask.shape[0],
            target=hp["kl_target"],
            horizon=hp["kl_horizon"],
        ).value
    metrics = {
        "reward/score": jnp.mean(score),
        "reward/rlhf": jnp.mean(score - beta * seq_kl),  # what PPO maximises: score - β KL
        "kl/sequence": mean_kl,  # mean over completions of Σ_t kl_t
        "kl/coef": beta,
        "val/explained_variance": losses.explained_variance(rollout["values"], returns, mask),
        **rollout_metrics(rollout),
    }
    return {**rollout, "advantages": advantages, "returns": returns}, metrics, new_beta


ALGORITHM = declare(__name__, "ppo", critic=True, packs=True, corrects=True)
