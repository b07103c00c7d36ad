"""Model FLOPs of a batch, by hand, and the MFU lookup."""

import numpy as np
import pytest

from jaxalign import models
from jaxalign.trainers import flops


def test_sequence_lengths_of_packed_and_padded_rows():
    seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    assert sorted(flops.sequence_lengths(seg).tolist()) == [2, 3, 6]


def test_batch_flops_by_hand():
    cfg = models.ModelConfig(
        vocab_size=10,
        hidden_size=4,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=2,
        intermediate_size=8,
    )
    # per layer: q 4·2·2=16, k 4·1·2=8, v 8, o 2·2·4=16, mlp 3·4·8=96 -> 144; head 4·10 = 40
    dense = 2.0 * (2 * 144 + 40)
    per_key = 4.0 * 2 * 2 * 2  # 4 · layers · heads · head_dim
    assert flops.dense_flops_per_token(cfg) == dense
    assert flops.attention_flops_per_key(cfg) == per_key
    batch = {
        "chosen_segment_ids": np.array([[1, 1, 1, 0]]),
        "rejected_segment_ids": np.array([[1, 1, 2, 0]]),
        "label": np.array([1.0]),
    }
    # sequences of 3, 2 and 1 tokens: 6 tokens, 6 + 3 + 1 = 10 (query, key) pairs
    want = 3.0 * (dense * 6 + per_key * 10)
    assert flops.batch_flops(cfg, batch, flops.step_passes()) == pytest.approx(want)
    assert flops.step_passes(reference=True) == 4.0 and flops.step_passes(frozen_base=True) == 2.0
    score_head = 2.0 * (2 * 144 + 4)
    assert flops.batch_flops(cfg, batch, 1.0, lm_head=False) == pytest.approx(score_head * 6 + per_key * 10)
    # the LM head at the loss's positions only (a head_index): 2 + 1 of the 6 tokens go through it
    batch.update(
        chosen_loss_mask=np.array([[0, 1, 1, 0]]),
        rejected_loss_mask=np.array([[0, 1, 0, 0]]),
        chosen_head_index=np.array([[1, 2]]),
        rejected_head_index=np.array([[1, 4]]),
    )
    head = 2.0 * 40
    want = 3.0 * ((dense - head) * 6 + head * 3 + per_key * 10)
    assert flops.batch_flops(cfg, batch, flops.step_passes()) == pytest.approx(want)


def test_peak_lookup():
    assert flops.peak_tflops("NVIDIA H200") == 989.0
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert flops.peak_tflops("TPU v5 lite") == 197.0
    assert flops.peak_tflops("TPU v5p") == 459.0
    assert flops.peak_tflops("cpu") is None
