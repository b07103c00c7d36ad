"""PPO on the embedded arithmetic task: the SFT policy, a critic, the task's reward, a KL penalty.

  python -m jaxalign.main --config=configs/ppo.py --workdir=/tmp/ppo
  python -m jaxalign.main --config=configs/ppo.py --config.ppo.adaptive_kl=True --config.ppo.kl_target=1.0
  python -m jaxalign.main --config=configs/ppo.py \
      --config.reward.model_path=jaxalign/assets/embedded/checkpoints/reward     # train on a reward model

The sequence reward is `reward.function` (1 correct and stopped, 0.5 correct but not stopped, 0 wrong,
-1 speaking as the user) at the completion's last token, minus a per-token KL penalty to the SFT
reference; the critic is the SFT backbone with a fresh value head. Measured on the 2-core CPU, on the task
before its 2026-11-24 regeneration: held-out greedy reward 0.34 -> 0.51 in ~75 s (on the regenerated task
the sampled reward rises, 0.24 -> 0.49 in 300 steps, but held-out greedy accuracy does not: README, Results).
On the task of 2026-12-06, whose SFT data teaches an occasional refusal, and with the decline prompts among
the training prompts: held-out accuracy 0.433 -> 0.593, refusal 0.014 -> 1.000, over-refusal 0.000. With `reward.model_path` the reward model's score is trained on
instead (and the critic starts from it) and `reward/env` only reported: the small embedded reward model is
gamed (80 steps: its score 0.60 -> 3.55, the task reward 0.34 -> 0.08).
Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (arXiv:1909.08593);
Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (arXiv:1707.06347).
"""

import ml_collections

from jaxalign import defaults


def get_config(arg=None):
    del arg
    # Measured: 1e-3 gets there faster but collapses with a smaller kl_coef. 64 prompts (= rollouts) a
    # step; 300 × 64 = 19,200 rollouts (~13 passes over the 1,500 prompts). The reward is the task's
    # function (see the module docstring for the reward model).
    c = defaults.rl_config("ppo", learning_rate=5e-4, batch_size=64, num_steps=300, eval_every=100)

    p = c.ppo = ml_collections.ConfigDict()
    p.critic_path = ""  # Critic init (ScalarHead); "" = reward.model_path, else model.path.
    p.ppo_epochs = 2  # Passes over each rollout batch.
    p.num_minibatches = 2  # Updates per pass: 64 rollouts / 2 = 32 per update; 4 updates per step.
    p.clip_eps = 0.2  # Policy ratio clip ε.
    p.value_clip_eps = 0.2  # Value clip, in reward units (TRL's cliprange_value).
    p.vf_coef = 0.1  # Loss = policy + vf_coef × value.
    p.gamma = 1.0  # Discount.
    p.gae_lambda = 0.95  # GAE λ.
    p.whiten_advantages = True  # Normalise advantages over the batch's tokens.
    p.kl_coef = 0.05  # β of the per-token penalty -β·KL; the adaptive controller's start.
    p.kl_estimator = "k1"  # k1 | k2 | k3 | abs (losses.kl_penalty), per token.
    p.adaptive_kl = False  # Ziegler et al.'s controller drives KL (Σ per completion) to kl_target.
    p.kl_target = 2.0
    p.kl_horizon = 10000  # In rollouts: β changes by at most 20% × batch / horizon per step.
    return defaults.lock(c)
