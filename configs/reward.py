"""A Bradley-Terry reward model on the embedded preference pairs, initialised from the SFT checkpoint.

  python -m jaxalign.main --config=configs/reward.py --workdir=/tmp/rm

The LM head is replaced by a scalar `score` head read at each sequence's last token; the export is a
`*ForSequenceClassification` checkpoint that transformers loads.
"""

import ml_collections

from configs import common


def get_config(arg=None):
    del arg
    c = common.base_config(
        "reward",
        train=common.PREFERENCE_TRAIN,
        eval_=common.asset("preference_test.jsonl"),
        model_path=common.asset("checkpoints", "sft"),
        learning_rate=1e-3,
    )
    c.train.num_steps = 150
    r = c.reward = ml_collections.ConfigDict()
    r.center_coef = 0.0  # Reward centering: + center_coef * mean((r_c + r_r)^2) (Eisenstein et al. 2023).
    return common.lock(c)
