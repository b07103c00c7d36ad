"""Online (iterative) DPO on the embedded arithmetic task from the SFT checkpoint, labelled by the task's
reward function: each step samples `n` answers per prompt from the current policy, pairs the best with the
worst (margin >= `min_margin`) and makes DPO updates on the pairs (jaxalign/trainers/online_dpo.py).

  python -m jaxalign.main --config=configs/online_dpo.py --workdir=/tmp/online_dpo
  python -m jaxalign.main --config=configs/online_dpo.py \
      --config.reward.model_path=jaxalign/assets/embedded/checkpoints/reward   # a reward model labels

The reward is `jaxalign.data.embedded:reward` (1 correct and stopped, 0.5 correct but not stopped, 0
wrong, -1 speaking as the user) unless `reward.model_path` names a reward model; the metrics report the
pairs kept (`pairs/kept_frac`: prompts whose answers did not all score the same), their mean margin and
the chosen and rejected answers' scores, and accuracy against the checkable answer (`reward.check_fn`).
"""

import ml_collections

from jaxalign import defaults


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/online_dpo.py:{arg}: this config takes no argument")
    # 16 prompts a step (round) × n 8 = 128 answers, at most 16 pairs.
    c = defaults.rl_config("online_dpo", learning_rate=2e-4, batch_size=16, num_steps=150, eval_every=50)

    o = c.online_dpo = ml_collections.ConfigDict()
    # Answers sampled per prompt; the best and the worst make the pair. Measured (held-out accuracy at steps
    # 0/50/100/150): n=8 0.467/0.478/0.513/0.536 (72% of prompts give a pair); n=4 0.467/0.520/0.598/0.496 (53%).
    o.n = 8
    o.min_margin = 0.5  # Pairs whose score margin is below this are dropped (0 keeps every unequal pair).
    o.beta = 0.1  # DPO's beta: reward = beta * log(pi / pi_ref), pi_ref = the starting (SFT) policy.
    o.loss_type = "sigmoid"  # sigmoid | ipo | hinge | robust (losses.dpo_loss).
    o.label_smoothing = 0.0  # cDPO / robust DPO's ε.
    o.epochs = 1  # Passes over each round's pairs.
    o.num_minibatches = 1  # Updates per pass.
    return defaults.lock(c)
