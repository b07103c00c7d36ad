"""Mistral (full attention and sliding window) logits vs transformers."""

import pytest
from hf_reference import assert_matches_transformers


@pytest.mark.parametrize("family", ['mistral', 'mistral_window'])
def test_mistral_logits_match_transformers(family):
    assert_matches_transformers(family)
