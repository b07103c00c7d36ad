"""GRPO (or RLOO) on the embedded arithmetic task from the SFT checkpoint, with the task's reward function.

  python -m jaxalign.main --config=configs/grpo.py --workdir=/tmp/grpo
  python -m jaxalign.main --config=configs/grpo.py --config.grpo.advantage=rloo
  python -m jaxalign.main --config=configs/grpo.py \
      --config.reward.model_path=jaxalign/assets/embedded/checkpoints/reward
  python -m jaxalign.main --config=configs/grpo.py:dapo      # or :dr_grpo, :gspo (VARIANTS below)

Each prompt is answered `group_size` times; a completion's advantage is its reward relative to its
group's ("grpo": standardised; "rloo": minus the mean of the others). No critic. The reward is
`jaxalign.data.embedded:reward` (1 correct and stopped, 0.5 correct but not stopped, 0 wrong, -1 speaking
as the user) unless `reward.model_path` names a reward model. Measured on the 2-core CPU, on the task
before its 2026-11-24 regeneration: held-out greedy reward 0.34 -> 0.52 in ~50 s (on the regenerated task
held-out accuracy does not rise: README, Results). On the task of 2026-12-06, with the decline prompts among
the training prompts: held-out accuracy 0.433 -> 0.598, refusal 0.014 -> 1.000, over-refusal 0.000.
The variants are config values (`configs/grpo.py:<variant>` picks a preset; every field stays
overridable):
  dapo     Yu et al. 2025 (arXiv:2503.14476): clip-higher ε_low 0.2 / ε_high 0.28, token-level loss, no KL,
           dynamic sampling (groups whose rewards are all equal get weight 0: dropped, not resampled; see
           losses.nonconstant_groups) and the soft overlong penalty over the last quarter of the budget.
  dr_grpo  Liu et al. 2025 (arXiv:2503.20783): advantages not divided by the group's std, the "constant"
           length normalisation (÷ rows × max_new_tokens), no KL.
  gspo     Zheng et al. 2025 (arXiv:2507.18071): the sequence-level importance ratio (length-normalised),
           clipped at 3e-4 / 4e-4, no KL; 2 iterations over the rollout so that the ratio is not always 1.
  cispo    MiniMax-M1 (arXiv:2506.13585): the clipped, detached IS weight min(w, 5) times A log π, token mean,
           no KL; 2 iterations.
  sapo     SAPO (arXiv:2511.20347): a sigmoid gate (4/τ) σ(τ (w - 1)) instead of the clip, τ 1.0 / 1.05 for
           positive / negative advantages; 2 iterations.
  gmpo     GMPO (arXiv:2507.20673): the geometric mean of the token ratios, each clipped to (e^-0.4, e^0.4)
           in log space, no KL; 2 iterations.
  bnpo     TRL's "bnpo": the clipped ratio with the token mean over the batch.
Shao et al. 2024, "DeepSeekMath" (arXiv:2402.03300);
Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization" (arXiv:2402.14740).
"""

import ml_collections

from jaxalign import defaults


VARIANTS = ("grpo", "dapo", "dr_grpo", "gspo", "cispo", "sapo", "gmpo", "bnpo")


def get_config(arg=None):
    variant = arg or "grpo"
    if variant not in VARIANTS:
        raise ValueError(f"configs/grpo.py:{variant}: unknown variant; expected one of {list(VARIANTS)}")
    # Measured: lr 1e-3 collapses (more so with beta = 0); 3e-4 is slower. 16 prompts a step × group_size 8
    # = 128 completions; 150 × 128 = 19,200 rollouts (held-out reward plateaus after ~150).
    c = defaults.rl_config("grpo", learning_rate=5e-4, batch_size=16, num_steps=150, eval_every=50)

    g = c.grpo = ml_collections.ConfigDict()
    g.advantage = "grpo"  # grpo (group-standardised) | rloo (leave-one-out baseline).
    g.group_size = 8  # G completions per prompt.
    g.scale_rewards = True  # grpo: divide by the group's std (False = Dr. GRPO's mean-centring only).
    g.beta = 0.04  # k3 KL-to-reference coefficient (the GRPO paper's); 0 = no reference pass.
    g.clip_eps = 0.2  # ε of the clipped ratio (ε_low).
    g.clip_eps_high = 0.0  # ε_high (DAPO's clip-higher); 0 = clip_eps.
    g.num_iterations = 1  # μ: passes over each rollout batch.
    g.num_minibatches = 2  # Updates per pass: 128 completions / 2 = 64 per update.
    g.loss_reduction = "sequence"  # sequence (GRPO paper) | token (DAPO) | constant (Dr. GRPO).
    g.importance_level = "token"  # token (GRPO) | sequence (GSPO: one length-normalised ratio per answer).
    # The per-token objective, TRL's names (losses.grpo_loss): grpo (clipped ratio) | bnpo (the same, token
    # mean) | cispo (clipped, detached IS weight × log π) | sapo (sigmoid gate) | gmpo (geometric mean).
    g.loss_type = "grpo"
    g.sapo_temperature_pos = 1.0  # SAPO's τ for A > 0 (the paper's and TRL's 1.0).
    g.sapo_temperature_neg = 1.05  # ... for A < 0 (1.05: negative-advantage tokens' gate decays faster).
    g.dynamic_sampling = False  # DAPO: weight 0 for groups whose rewards are all equal (no signal).
    g.overlong_cache = 0  # DAPO's soft overlong penalty over the last N tokens of the budget; 0 = off.
    g.overlong_penalty = 1.0  # ... its size at the full budget (the reward falls linearly to -this).
    g.variant = variant  # which preset this is (set by configs/grpo.py:<variant>; informative)
    if variant == "dapo":
        g.clip_eps, g.clip_eps_high, g.loss_reduction, g.beta = 0.2, 0.28, "token", 0.0
        g.dynamic_sampling = True
        g.overlong_cache = max(c.rollout.max_new_tokens // 4, 1)
    elif variant == "dr_grpo":
        g.scale_rewards, g.loss_reduction, g.beta = False, "constant", 0.0
    elif variant == "gspo":
        g.importance_level, g.loss_reduction, g.beta = "sequence", "sequence", 0.0
        g.clip_eps, g.clip_eps_high = 3e-4, 4e-4
        g.num_iterations = 2
    elif (
        variant == "cispo"
    ):  # the cap 1 + ε_high = 5 (TRL's recommended epsilon_high=5.0 for CISPO), token mean
        g.loss_type, g.loss_reduction, g.clip_eps_high, g.beta = "cispo", "token", 4.0, 0.0
        g.num_iterations = 2  # so that the weight is not always 1
    elif variant == "sapo":
        g.loss_type, g.loss_reduction = "sapo", "sequence"
        g.num_iterations = 2
    elif variant == "gmpo":  # the paper's log-space range (e^-0.4, e^0.4), no KL
        g.loss_type, g.loss_reduction, g.clip_eps, g.clip_eps_high, g.beta = "gmpo", "sequence", 0.4, 0.4, 0.0
        g.num_iterations = 2
    elif variant == "bnpo":
        g.loss_type, g.loss_reduction = "bnpo", "token"
    return defaults.lock(c)
