"""Qwen2/2.5 (qkv bias, tied) and Qwen3 (q/k norm, head_dim != D/H) logits vs transformers."""

import pytest
from hf_reference import assert_matches_transformers


@pytest.mark.parametrize("family", ['qwen2', 'qwen3'])
def test_qwen_logits_match_transformers(family):
    assert_matches_transformers(family)
