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
critic and vice versa. `minibatch_updates` is the epoch × minibatch loop GRPO reuses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxalign import losses
from jaxalign.trainers import preemption
from jaxalign.trainers.rewards import completion_logprobs, completion_values, rollout_metrics
from jaxalign.errors import config_fail as _fail


# What the RL loop asks of an algorithm (`trainers/rl.py`; the same functions in `grpo.py`).
CRITIC = True  # a value model, trained with the policy


def group_size(hp):
    del hp
    return 1


def updates_per_step(hp):
    """Optimiser updates per rollout batch."""
    return int(hp["num_minibatches"]) * int(hp["ppo_epochs"])


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


def minibatch_updates(
    loss_fn, tx, params, opt_state, data, key, *, epochs, num_minibatches, batch_sharding=None
):
    """`epochs` passes over `data` ([R, ...] arrays), each in `num_minibatches` shuffled minibatches of
    R / num_minibatches rows; one optimiser update per minibatch, in a `lax.scan` (one compiled body).

    `loss_fn(params, minibatch) -> (loss, metrics)`. Returns (params, opt_state, metrics averaged over
    the updates, plus `loss/total`, `optim/grad_norm`, `optim/update_norm`, `optim/nonfinite`: the fraction
    of updates skipped because their loss or gradient norm was not finite).
    """
    rows = data["mask"].shape[0]
    perms = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), rows) for e in range(epochs)])
    idx = perms.reshape(epochs * num_minibatches, rows // num_minibatches)  # [E·M, R/M]
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(carry, i):
        params, opt_state = carry
        mb = jax.tree.map(lambda x: jnp.take(x, i, axis=0), data)
        if batch_sharding is not None:  # keep the minibatch split over the batch axes, as the rollout is
            mb = jax.lax.with_sharding_constraint(mb, jax.tree.map(lambda _: batch_sharding, mb))
        (loss, metrics), grads = grad_fn(params, mb)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # else skip this update (see preemption)
        params, opt_state = preemption.keep_if_finite(
            finite, (optax.apply_updates(params, updates), new_opt_state), (params, opt_state)
        )
        metrics = {
            **metrics,
            "loss/total": loss,
            "optim/grad_norm": grad_norm,
            "optim/update_norm": optax.global_norm(updates),
            "optim/nonfinite": 1.0 - finite.astype(jnp.float32),
        }
        return (params, opt_state), metrics

    (params, opt_state), stacked = jax.lax.scan(body, (params, opt_state), idx)
    return params, opt_state, jax.tree.map(lambda x: jnp.mean(x, axis=0), stacked)


def make_update_fn(policy_model, value_model, tx, hp, *, schedule=None, batch_sharding=None):
    """Returns `update(state, rollout) -> (state, metrics)`, to be jitted with the state donated.

    `hp`: `config.ppo` as a plain dict. `rollout`: prompt_ids, prompt_segment_ids, tokens, mask, and from
    the score step old_logprobs, ref_logprobs, values, stopped, plus `score` [R] (the sequence reward).
    `state`: an `rl.RLState` whose `kl_coef` is β.
    """
    epochs, num_mb = int(hp["ppo_epochs"]), int(hp["num_minibatches"])
    clip_eps, value_clip_eps, vf_coef = hp["clip_eps"], hp["value_clip_eps"], hp["vf_coef"]
    gamma, lam, kind = hp["gamma"], hp["gae_lambda"], hp["kl_estimator"]
    penalty = hp["missing_eos_penalty"]

    def loss_fn(params, mb):
        mask = mb["mask"]
        logprobs, logits = completion_logprobs(policy_model, params["policy"], mb)
        pg_loss, pg_metrics = losses.ppo_clip_loss(
            logprobs, mb["old_logprobs"], mb["advantages"], mask, clip_eps=clip_eps
        )
        values = completion_values(value_model, params["value"], mb)
        vf_loss, vf_metrics = losses.value_loss(
            values, mb["values"], mb["returns"], mask, clip_eps=value_clip_eps
        )
        entropy = losses.masked_mean(losses.token_entropy(logits), mask)
        return pg_loss + vf_coef * vf_loss, {**pg_metrics, **vf_metrics, "policy/entropy": entropy}

    def update(state, rollout):
        mask = rollout["mask"].astype(jnp.float32)  # [R, N]
        kl = losses.kl_penalty(rollout["old_logprobs"], rollout["ref_logprobs"], kind) * mask
        score = rollout["score"] - penalty * (1.0 - rollout["stopped"])  # [R]
        beta = state.kl_coef
        rewards = losses.token_rewards(score, kl, mask, beta)  # [R, N]
        advantages, returns = losses.gae(rewards, rollout["values"], mask, gamma=gamma, lam=lam)
        if hp["whiten_advantages"]:
            advantages = losses.whiten(advantages, mask) * mask
        data = {**rollout, "advantages": advantages, "returns": returns}
        key = jax.random.wrap_key_data(state.rng)
        params, opt_state, metrics = minibatch_updates(
            loss_fn,
            tx,
            state.params,
            state.opt_state,
            data,
            jax.random.fold_in(key, 2),
            epochs=epochs,
            num_minibatches=num_mb,
            batch_sharding=batch_sharding,
        )

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
        metrics.update(
            {
                "reward/score": jnp.mean(score),
                "reward/rlhf": jnp.mean(score - beta * seq_kl),  # what PPO maximises: score - β KL
                "kl/sequence": mean_kl,  # mean over completions of Σ_t kl_t
                "kl/coef": beta,
                "val/explained_variance": losses.explained_variance(rollout["values"], returns, mask),
                **rollout_metrics(rollout),
            }
        )
        if schedule is not None:
            metrics["optim/learning_rate"] = jnp.asarray(schedule(state.step * epochs * num_mb), jnp.float32)
        new_key, _ = jax.random.split(key)
        new_state = state._replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            rng=jax.random.key_data(new_key),
            kl_coef=new_beta,
        )
        return new_state, metrics

    return update
