"""Gemma logits vs transformers: v1 (1 + w RMSNorm, sqrt(D) embedding scale, GeGLU, tied); Gemma 2
(soft-capped attention and final logits, alternating sliding / full layers, sandwich norms,
query_pre_attn_scalar); Gemma 3 text (q/k norms, the sliding layers' own RoPE base, linear RoPE scaling
on the full layers). Left- and right-padded rows longer than the sliding window."""

import pytest
from hf_reference import assert_matches_transformers


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_gemma_logits_match_transformers(family):
    assert_matches_transformers(family)


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_gemma2_3_greedy_decode_on_the_cache_equals_full_forwards(family):
    """The sampler's cache path (per-layer sliding windows, soft-caps, local RoPE) against a full forward
    per new token, past the window."""
    import jax
    import numpy as np

    from hf_reference import jax_forward, tiny_hf_model
    from jaxalign.checkpoints.hf import load_hf_model
    from jaxalign.models import Transformer
    from jaxalign.sampling import generate, left_pad

    path, _ = tiny_hf_model(family)
    config, params = load_hf_model(path)
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [3, 4, 5]]
    n = 10
    b = left_pad(prompts, pad_id=0)
    out = jax.device_get(
        generate(
            Transformer(config),
            params,
            b["prompt_ids"],
            b["prompt_segment_ids"],
            None,
            max_new_tokens=n,
            temperature=0.0,
        )
    )
    for r, p in enumerate(prompts):
        seq = list(p)
        for _ in range(n):
            width = 24
            ids = np.zeros((1, width), np.int32)
            ids[0, : len(seq)] = seq
            seg = (np.arange(width) < len(seq)).astype(np.int32)[None]
            logits = np.asarray(jax_forward(config, params, ids, np.arange(width, dtype=np.int32)[None], seg))
            seq.append(int(np.argmax(logits[0, len(seq) - 1])))
        assert list(out.tokens[r]) == seq[len(p) :], (family, r)
