"""A Bradley-Terry reward model on the embedded preference pairs, initialised from the SFT checkpoint.

  python -m jaxalign.main --config=configs/reward.py --workdir=/tmp/rm

The LM head is replaced by a scalar `score` head read at each sequence's last token; the export is a
`*ForSequenceClassification` checkpoint that transformers loads.
"""

import ml_collections

from jaxalign import defaults


def get_config(arg=None):
    del arg
    c = defaults.base_config(
        "reward",
        train=defaults.PREFERENCE_TRAIN,
        eval_=defaults.asset("preference_test.jsonl"),
        model_path=defaults.asset("checkpoints", "sft"),
        learning_rate=1e-3,
    )
    c.train.num_steps = 150
    r = c.reward = ml_collections.ConfigDict()
    r.center_coef = 0.0  # Reward centering: + center_coef * mean((r_c + r_r)^2) (Eisenstein et al. 2023).
    return defaults.lock(c)
