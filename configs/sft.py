"""Supervised fine-tuning on the embedded chat task, from the pre-trained checkpoint.

python -m jaxalign.main --config=configs/sft.py --workdir=/tmp/sft
# Whole-conversation SFT (learns the user's turns too, the failure preference training fixes):
python -m jaxalign.main --config=configs/sft.py --config.data.assistant_only_loss=False
"""

import ml_collections

from jaxalign import defaults


def get_config(arg=None):
    del arg
    c = defaults.base_config(
        "sft",
        train=defaults.asset("sft_train.jsonl"),
        eval_=defaults.asset("sft_test.jsonl"),
        model_path=defaults.asset("checkpoints", "pretrain"),
        learning_rate=2e-3,
    )
    c.data.max_length = 96  # sft_train's critique-and-revision conversations are up to 92 tokens.
    c.train.num_steps = 300
    c.train.eval_every = 100
    c.sft = ml_collections.ConfigDict()
    return defaults.lock(c)
