"""Shifting, truncation, packing (segment ids / positions) and left-padded prompt rows."""

import numpy as np

from jaxalign.data import batching


def seq(ids, mask=None):
    ids = np.asarray(ids, np.int32)
    return ids, np.ones(len(ids), np.int32) if mask is None else np.asarray(mask, np.int32)


def test_pad_rows_shift():
    rows = batching.pad_rows([seq([1, 10, 11, 2], [0, 0, 1, 1])], T=6, pad_id=9)
    assert rows["input_ids"].tolist() == [[1, 10, 11, 9, 9, 9]]
    assert rows["targets"].tolist() == [[10, 11, 2, 0, 0, 0]]  # logits[t] predicts targets[t]
    assert rows["loss_mask"].tolist() == [[0, 1, 1, 0, 0, 0]]
    assert rows["positions"].tolist() == [[0, 1, 2, 0, 0, 0]]
    assert rows["segment_ids"].tolist() == [[1, 1, 1, 0, 0, 0]]
    assert rows["loss_mask"].dtype == np.float32 and rows["input_ids"].dtype == np.int32


def test_pack_segments_and_positions():
    seqs = [seq([1, 2, 3, 4]), seq([5, 6, 7]), seq([8, 9, 10, 11, 12]), seq([13, 14])]
    rows = batching.pack(seqs, T=6, pad_id=0)
    # pairs: 3, 2, 4, 1 -> row0: [3, 2] (5 cols), row1: [4, 1] (5 cols)
    assert rows["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 2, 0]]
    assert rows["positions"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]
    assert rows["input_ids"].tolist() == [[1, 2, 3, 5, 6, 0], [8, 9, 10, 11, 13, 0]]
    assert rows["targets"].tolist() == [[2, 3, 4, 6, 7, 0], [9, 10, 11, 12, 14, 0]]
    # No target crosses a segment boundary: the target of the last token of a segment is its own EOS.
    assert rows["loss_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]]


def test_packed_equals_unpacked_pairs():
    rng = np.random.default_rng(0)
    seqs = [seq(rng.integers(1, 50, rng.integers(2, 9))) for _ in range(30)]
    packed = batching.pack(seqs, T=16)
    unpacked = batching.pad_rows(seqs, T=16)

    def pairs(rows):
        out = []
        for r in range(len(rows["segment_ids"])):
            for s in sorted(set(rows["segment_ids"][r]) - {0}):
                sel = rows["segment_ids"][r] == s
                out.append(
                    (
                        tuple(rows["input_ids"][r][sel]),
                        tuple(rows["targets"][r][sel]),
                        tuple(rows["positions"][r][sel]),
                    )
                )
        return sorted(out)

    assert pairs(packed) == pairs(unpacked)
    assert len(packed["input_ids"]) < len(unpacked["input_ids"])


def test_truncation_policy():
    p, c, cm = np.arange(10), np.arange(100, 110), np.ones(10, np.int32)
    p2, c2, cm2, cut = batching.truncate_prompt_completion(p, c, cm, max_length=12, max_prompt_length=4)
    assert p2.tolist() == [6, 7, 8, 9]  # prompt: keep the last max_prompt_length tokens
    assert c2.tolist() == list(range(100, 108)) and len(cm2) == 8  # completion: keep the first
    assert cut
    p3, c3, _, cut3 = batching.truncate_prompt_completion(p[:3], c[:3], cm[:3], 12, 4)
    assert p3.tolist() == [0, 1, 2] and len(c3) == 3 and not cut3
    # Without max_prompt_length the prompt still leaves one completion token.
    p4, c4, _, _ = batching.truncate_prompt_completion(np.arange(20), c, cm, 12, None)
    assert len(p4) == 11 and len(c4) == 1


def test_split_chunks_covers_every_pair_once():
    ids = np.arange(11)
    chunks = batching.split_chunks(ids, np.ones(11, np.int32), max_length=4)
    pairs = [(a, b) for ch, _ in chunks for a, b in zip(ch[:-1], ch[1:])]
    assert pairs == list(zip(ids[:-1], ids[1:]))
    assert all(len(ch) <= 4 for ch, _ in chunks)


def test_left_pad_prompts():
    rows = batching.left_pad_prompts([np.array([5, 6, 7]), np.array([1, 2, 3, 4, 5, 6])], P=5, pad_id=0)
    assert rows["prompt_ids"].tolist() == [[0, 0, 5, 6, 7], [2, 3, 4, 5, 6]]
    assert rows["prompt_positions"].tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert rows["prompt_segment_ids"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
