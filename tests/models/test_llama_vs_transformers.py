"""Llama 2/3 logits vs transformers (random tiny models, float32, padded batches)."""

import pytest
from hf_reference import assert_matches_transformers


@pytest.mark.parametrize("family", ["llama3", "llama2_tied_bias"])
def test_llama_logits_match_transformers(family):
    assert_matches_transformers(family)


def test_llama_scan_layers_and_remat_match_transformers():
    assert_matches_transformers("llama3", scan_layers=True, remat=True)
