"""Synthetic preference pairs: sampled, scored, written in the format the DPO trainer reads."""

import json
import os

import pytest

from jaxalign import synthesize
from jaxalign.data import embedded, pipeline

SFT = os.path.join(embedded.EMBEDDED_DIR, "checkpoints", "sft")
RM = os.path.join(embedded.EMBEDDED_DIR, "checkpoints", "reward")
PROMPTS = os.path.join(embedded.EMBEDDED_DIR, "prompts_train.jsonl")


@pytest.mark.parametrize("scorer", [dict(reward_fn="jaxalign.data.embedded:reward"), dict(reward_model=RM)])
def test_pairs_are_ordered_by_score_and_readable_by_the_trainer(tmp_path, scorer):
    out = str(tmp_path / "pairs.jsonl")
    stats = synthesize.synthesize_pairs(SFT, PROMPTS, out, n=4, limit=16, max_new_tokens=16, **scorer)
    assert stats["prompts"] == 16 and stats["pairs"] + stats["skipped_ties"] == 16
    rows = [json.loads(l) for l in open(out)]
    assert len(rows) == stats["pairs"] > 0
    for r in rows:
        assert r["score_chosen"] > r["score_rejected"]
    ds = pipeline.build_dataset(
        out, kind="preference", tokenizer=embedded.load_tokenizer(), max_length=64, max_prompt_length=32
    )
    assert ds.num_examples == len(rows)
    assert not os.path.exists(out + ".tmp")


def test_needs_exactly_one_scorer(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        synthesize.synthesize_pairs(SFT, PROMPTS, str(tmp_path / "x.jsonl"))
