"""GRPO (or RLOO) on the embedded arithmetic task from the SFT checkpoint, with the task's reward function.

  python -m jaxalign.main --config=configs/grpo.py --workdir=/tmp/grpo
  python -m jaxalign.main --config=configs/grpo.py --config.grpo.advantage=rloo
  python -m jaxalign.main --config=configs/grpo.py \
      --config.reward.model_path=jaxalign/assets/embedded/checkpoints/reward

Each prompt is answered `group_size` times; a completion's advantage is its reward relative to its
group's ("grpo": standardised; "rloo": minus the mean of the others). No critic. The reward is
`jaxalign.data.embedded:reward` (1 correct and stopped, 0.5 correct but not stopped, 0 wrong, -1 speaking
as the user) unless `reward.model_path` names a reward model. Measured on the 2-core CPU, on the task
before its 2026-11-24 regeneration: held-out greedy reward 0.34 -> 0.52 in ~50 s (on the regenerated task
held-out accuracy does not rise: README, Results).
Shao et al. 2024, "DeepSeekMath" (arXiv:2402.03300);
Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization" (arXiv:2402.14740).
"""

import ml_collections

from configs import common, ppo


def get_config(arg=None):
    del arg
    c = common.base_config(
        "grpo",
        train=common.asset("prompts_train.jsonl"),
        eval_=common.asset("prompts_test.jsonl"),  # 450 held-out prompts, greedy.
        model_path=common.asset("checkpoints", "sft"),
        learning_rate=5e-4,  # Measured: 1e-3 collapses (more so with beta = 0); 3e-4 is slower.
    )
    ppo.prompt_data(c)
    c.train.batch_size = 16  # Prompts per step: 16 × group_size 8 = 128 completions.
    c.train.num_steps = 150  # 150 × 128 = 19,200 rollouts; held-out reward plateaus after ~150.
    c.train.log_every = 25
    c.train.eval_every = 50
    c.train.eval_batch_size = 160  # 450 held-out prompts = 3 batches (the last one padded).
    c.optimizer.warmup_steps = 2  # Rollout steps (each is num_iterations × num_minibatches updates).
    c.optimizer.schedule = "constant"
    c.rollout = ppo.rollout_config()
    c.reward = ppo.reward_config()

    g = c.grpo = ml_collections.ConfigDict()
    g.advantage = "grpo"  # grpo (group-standardised) | rloo (leave-one-out baseline).
    g.group_size = 8  # G completions per prompt.
    g.scale_rewards = True  # grpo: divide by the group's std (False = Dr. GRPO's mean-centring only).
    g.beta = 0.04  # k3 KL-to-reference coefficient (TRL's default); 0 = no reference pass.
    g.clip_eps = 0.2  # ε of the clipped ratio (ε_low).
    g.clip_eps_high = 0.0  # ε_high (DAPO's clip-higher); 0 = clip_eps.
    g.num_iterations = 1  # μ: passes over each rollout batch.
    g.num_minibatches = 2  # Updates per pass: 128 completions / 2 = 64 per update.
    g.loss_reduction = "sequence"  # sequence (GRPO paper) | token (DAPO) | constant (Dr. GRPO).
    return common.lock(c)
