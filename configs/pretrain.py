"""CLM pre-training of the tiny embedded model from random init (the first step of the embedded pipeline).

  python -m jaxalign.main --config=configs/pretrain.py --workdir=/tmp/pretrain

Model: 2 layers × d=64 Llama; 4 heads, 2 KV heads; ≈ 120k parameters with the embedded vocabulary.
"""

import ml_collections

from jaxalign import defaults


def get_config(arg=None):
    del arg
    c = defaults.base_config(
        "clm",
        train=defaults.asset("pretrain_train.jsonl"),
        eval_=defaults.asset("pretrain_test.jsonl"),
        learning_rate=3e-3,
    )
    c.model.tokenizer = defaults.asset("tokenizer")
    c.model.init = ml_collections.ConfigDict(
        dict(
            model_type="llama",
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            vocab_size=0,  # 0 = the tokenizer's vocabulary size.
        )
    )
    c.data.packing = True  # 32 rows × 64 tokens = 2,048 tokens per step.
    c.train.num_steps = 600
    c.train.eval_every = 200
    c.clm = ml_collections.ConfigDict()
    c.clm.z_loss = 0.0  # PaLM's log(Z)^2 regulariser weight.
    return defaults.lock(c)
