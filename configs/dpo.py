"""DPO (and IPO, cDPO, hinge, robust via `dpo.loss_type`) on the embedded task, from the SFT checkpoint.

  python -m jaxalign.main --config=configs/dpo.py --workdir=/tmp/dpo
  python -m jaxalign.main --config=configs/dpo.py --config.dpo.loss_type=ipo --config.dpo.beta=0.5

Rafailov et al. 2023, "Direct Preference Optimization" (arXiv:2305.18290).
"""

import ml_collections

from jaxalign import defaults


def get_config(arg=None):
    del arg
    c = defaults.base_config(
        "dpo",
        train=defaults.PREFERENCE_WIDE_TRAIN,  # with beta 0.3: unseen wordings answered and refused
        eval_=defaults.asset("preference_test.jsonl"),
        model_path=defaults.asset("checkpoints", "sft"),
        learning_rate=3e-4,  # Measured, eval of the export (SFT: task accuracy 46.7%, refusal 0%):
        # rpo_alpha 1, 300 steps: reward acc. 0 -> 94%, task 57.3%, refusal
        # 100%, over-refusal 0%, KL 2.1. Plain DPO (rpo_alpha 0) pushes the
        # labeller's a+b answers down without making the correct answer the
        # most likely (notes/README_results.md, measured on the previous task).
        # On the task of 2026-12-06 (SFT 0.433): 0.780, refusal 1.0, over-refusal 0 (README, Evaluation).
    )
    c.train.batch_size = 32  # 32 pairs = 64 sequences per forward.
    c.train.num_steps = 300  # ~2 passes over the 3,100 pairs; 150 steps: 4 points less accuracy.
    c.train.eval_every = 50
    d = c.dpo = ml_collections.ConfigDict()
    d.beta = 0.3  # KL strength: reward = beta * log(pi / pi_ref). 0.1 refused unseen wordings less than
    # half the time, often as fragments ("sorry."); 0.3 keeps closer to SFT's fluent replies.
    d.loss_type = "sigmoid"  # sigmoid | ipo | hinge | robust (see jaxalign/losses/dpo.py).
    d.label_smoothing = 0.0  # cDPO / robust: assumed probability that a label is flipped.
    d.rpo_alpha = 1.0  # RPO: + rpo_alpha × NLL of the chosen completions (TRL's rpo_alpha);
    # 0 = plain DPO.
    d.dpop_lambda = 0.0  # DPOP: penalise chosen log-probs falling below the reference's (losses.dpo_loss).
    d.precompute_ref = True  # Reference log-probs in one pass up front (then cached, below): no
    # reference in memory, no reference forward in the step (DPO step -19%
    # to -22%, benchmarks/README.md). False: a frozen copy runs every step.
    d.ref_cache_dir = defaults.REF_CACHE_DIR  # precompute_ref: keep them on disk, keyed by data + checkpoint
    # (jaxalign/trainers/reference_cache.py); "" = recompute every run.
    return defaults.lock(c)
