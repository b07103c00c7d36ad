"""Gemma (1 + w RMSNorm, sqrt(D) embedding scale, GeGLU, tied) logits vs transformers."""

import pytest
from hf_reference import assert_matches_transformers


@pytest.mark.parametrize("family", ['gemma'])
def test_gemma_logits_match_transformers(family):
    assert_matches_transformers(family)
