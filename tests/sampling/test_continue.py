"""make_continue_fn: a multi-turn episode's next turn on the kept KV equals generating from the whole
context as a fresh prompt (tokens and log-probs), and prefills only the appended tokens."""

import jax
import numpy as np

from jaxalign import models
from jaxalign.sampling import left_pad, make_continue_fn, make_generate_fn

CFG = models.ModelConfig(
    vocab_size=64,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    intermediate_size=64,
    initializer_range=0.5,
)
EOS = 2


def _init():
    return jax.jit(models.init_params, static_argnums=0)(CFG, jax.random.key(0))


def test_second_turn_on_kept_cache_equals_fresh_prompt():
    model, params = models.Transformer(CFG), _init()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    n1, n2, temp = 6, 5, 1.0
    first = make_generate_fn(
        model, max_new_tokens=n1, temperature=temp, eos_ids=(EOS,), compact=False, keep_cache=True
    )
    cont = make_continue_fn(model, max_new_tokens=n2, temperature=temp, eos_ids=(EOS,))
    b = left_pad(prompts, pad_id=0)
    key = jax.random.key(3)
    out1, cache = first(params, b["prompt_ids"], b["prompt_segment_ids"], key)
    out1 = jax.device_get(out1)
    # Each row's context: prompt + turn-1 tokens; the environment appends [30, 31] (row 1: nothing: done).
    appended, starts, contexts = [], [], []
    for r, p in enumerate(prompts):
        c = [int(t) for t in out1.tokens[r][out1.mask[r] == 1]]
        env = [] if r == 1 else [30, 31 + r]
        appended.append([c[-1]] + env if env else [])
        starts.append(len(p) + len(c) - 1)
        contexts.append(p + c + env)
    a = left_pad(appended, pad_id=0, length=4)
    key2 = jax.random.key(4)
    out2, cache2 = cont(
        params, cache, np.asarray(starts, np.int32), a["prompt_ids"], a["prompt_segment_ids"], key2
    )
    out2 = jax.device_get(out2)
    assert cache2["mask"].shape[1] == len(prompts[0]) + n1 + 4 + n2  # grown by the appended + new only
    assert out2.mask[1].sum() == 0  # the done row stays padding
    # The same turn sampled from the whole context as a fresh prompt (the same row keys and step keys).
    fresh = make_generate_fn(model, max_new_tokens=n2, temperature=temp, eos_ids=(EOS,), compact=False)
    for r in (0, 2):
        f = left_pad([contexts[r]], pad_id=0)
        ref = jax.device_get(
            fresh(params, f["prompt_ids"], f["prompt_segment_ids"], key2, row_ids=np.asarray([r]))
        )
        np.testing.assert_array_equal(out2.tokens[r], ref.tokens[0])
        np.testing.assert_allclose(out2.model_logprobs[r], ref.model_logprobs[0], atol=2e-5)
