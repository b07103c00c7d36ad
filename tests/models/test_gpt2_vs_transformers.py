"""GPT-2 (learned positions, LayerNorm, gelu_new, Conv1D, tied) logits vs transformers."""

import pytest
from hf_reference import assert_matches_transformers


@pytest.mark.parametrize("family", ['gpt2'])
def test_gpt2_logits_match_transformers(family):
    assert_matches_transformers(family)
