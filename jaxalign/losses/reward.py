"""Bradley-Terry reward-model loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._utils import f32, stop

Array = jax.Array


def reward_bt_loss(
    chosen_rewards: Array, rejected_rewards: Array, margin: Array | None = None, *, center_coef: float = 0.0
) -> tuple[Array, dict]:
    """Bradley-Terry pairwise loss for reward models (Ouyang et al. 2022, eq. 1), as TRL's RewardTrainer.

        L = mean_i[ -log σ(r_c,i - r_r,i - m_i) ]  +  center_coef * mean_i[ (r_c,i + r_r,i)^2 ]

    The margin m (Llama 2, Touvron et al. 2023) demands a larger gap for clearer preferences. The second
    term (Eisenstein et al. 2023; TRL's `center_rewards_coefficient`, 1e-2 suggested) pulls rewards toward
    zero mean. `jax.nn.log_sigmoid` is used rather than log(sigmoid(x)), which underflows to log(0) = -inf
    for large negative x.

    Args:
      chosen_rewards: [B] (or [B, 1]) scalar rewards of the preferred completions.
      rejected_rewards: same shape, rewards of the dispreferred completions.
      margin: optional, broadcastable to the rewards: the required reward gap per pair.
      center_coef: coefficient of the reward-centering term; 0 turns it off.

    Returns:
      (loss, metrics): metrics `accuracy` (mean of r_c > r_r, without margin), `margin` (mean r_c - r_r),
      `rewards/chosen`, `rewards/rejected`, `mean_reward`, `min_reward`, `max_reward` (over both).
    """
    rc, rr = f32(chosen_rewards), f32(rejected_rewards)
    diff = rc - rr
    logits = diff if margin is None else diff - f32(margin)
    loss = -jnp.mean(jax.nn.log_sigmoid(logits))
    loss = loss + center_coef * jnp.mean(jnp.square(rc + rr))
    both = jnp.concatenate([rc.reshape(-1), rr.reshape(-1)])
    metrics = {
        "accuracy": jnp.mean(f32(rc > rr)),
        "margin": jnp.mean(diff),
        "rewards/chosen": jnp.mean(rc),
        "rewards/rejected": jnp.mean(rr),
        "mean_reward": jnp.mean(both),
        "min_reward": jnp.min(both),
        "max_reward": jnp.max(both),
    }
    return loss, stop(metrics)
