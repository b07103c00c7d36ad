"""Padding-free SFT, preference and KTO batches: the same losses, metrics and gradients as padded rows.

Real embedded rows go through the data pipeline twice (`packing=False` / `packing=True`), the iterators
visit the same examples, and each objective's loss is taken on both batches with one random model.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxalign import models, registry
from jaxalign.data import batching, embedded, pipeline
from jaxalign.trainers import objectives

from jaxalign import defaults as common

T = 48


@pytest.fixture(scope="module")
def tok():
    return embedded.load_tokenizer()


@pytest.fixture(scope="module")
def model_and_params(tok):
    cfg = models.ModelConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
    )
    model = models.Transformer(cfg)
    return model, models.init_params(cfg, jax.random.key(0)), models.init_params(cfg, jax.random.key(1))


_DATASETS = {}


def _dataset(tok, kind, path):
    if (kind, path) not in _DATASETS:  # the first 96 rows: tokenizing the whole file takes seconds
        with open(path) as f:
            rows = [json.loads(line) for line in f.readlines()[:96]]
        _DATASETS[kind, path] = pipeline.build_dataset(
            rows, kind=kind, tokenizer=tok, max_length=T, max_prompt_length=24
        )
    return _DATASETS[kind, path]


def _batches(tok, kind, path, batch_size, process_index=0, process_count=1, row_multiple=1, **kw):
    out = []
    for packing in (False, True):
        ds = dataclasses.replace(_dataset(tok, kind, path), padding_free=packing)
        it = pipeline.BatchIterator(
            ds,
            batch_size,
            seed=3,
            process_index=process_index,
            process_count=process_count,
            row_multiple=row_multiple,
            pad_id=tok.pad_token_id,
            **kw,
        )
        out.append([next(it) for _ in range(2)])
    return out


HOST = ("weight", "answer")


def _device(batch):
    return {k: v for k, v in batch.items() if k not in HOST}


@pytest.mark.parametrize(
    "objective,hp",
    [
        ("dpo", dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0, rpo_alpha=1.0)),
        ("dpo", dict(beta=0.5, loss_type="ipo", label_smoothing=0.0, rpo_alpha=0.0)),
        ("orpo", dict(beta=0.1)),
        ("simpo", dict(beta=2.0, gamma=1.0)),
        ("kto", dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.5)),
        ("sft", {}),
    ],
)
def test_packed_equals_padded_losses_and_gradients(tok, model_and_params, objective, hp):
    model, params, ref = model_and_params
    kind = registry.get(objective).data
    path = common.asset(
        {"kto": "kto_train.jsonl", "sft": "sft_train.jsonl"}.get(kind, "preference_train.jsonl")
    )
    padded, packed = _batches(tok, kind, path, batch_size=8)
    loss_fn = getattr(objectives, registry.get(objective).loss)(model, hp)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    for a, b in zip(padded, packed):
        assert "sequence_ids" in b and "sequence_ids" not in a
        # Fewer rows than the padded batch's 2B (B for KTO), the same tokens.
        assert b["input_ids"].shape[0] < a[next(k for k in a if k.endswith("input_ids"))].shape[0] * (
            2 if kind == "preference" else 1
        )
        assert b["example_mask"].shape == (8,) and b["input_ids"].shape[1] == T
        assert int(np.sum(b["segment_ids"] > 0)) == sum(
            int(np.sum(v > 0)) for k, v in a.items() if k.endswith("segment_ids")
        )
        (la, ma), ga = grad_fn(params, ref, _device(a))
        (lb, mb), gb = grad_fn(params, ref, _device(b))
        np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-6)
        assert sorted(ma) == sorted(mb)
        for k in ma:
            np.testing.assert_allclose(mb[k], ma[k], rtol=1e-5, atol=1e-5, err_msg=k)
        for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)


def test_packed_equals_padded_reward_model(tok):
    """The reward model reads each whole sequence's last token (the EOS) from padding-free rows."""
    cfg = models.ModelConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
    )
    model = models.ScalarHeadModel(cfg)
    params = models.init_params(cfg, jax.random.key(2), model)
    path = common.asset("preference_train.jsonl")
    ds = _dataset(tok, "preference", path)
    padded = dataclasses.replace(ds, padding_free=False)
    whole = dataclasses.replace(ds, padding_free=True, whole_sequences=True)
    loss_fn = objectives.make_reward_loss(model, dict(center_coef=0.01))
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    for h in range(2):  # host 1 of 2: global slots and row offsets
        a, b = (
            next(
                pipeline.BatchIterator(
                    d, 16, seed=5, process_index=h, process_count=2, pad_id=tok.pad_token_id
                )
            )
            for d in (padded, whole)
        )
        assert b["input_ids"].shape[1] == T + 1 and b["input_ids"].shape[0] < 16
        # Each sequence's last position holds its EOS, the last target of the padded row.
        eos = np.asarray(a["chosen_targets"])[np.arange(8), np.sum(a["chosen_segment_ids"] > 0, 1) - 1]
        rows = b["input_ids"].shape[0]
        local_last = b["sequence_last"] - h * rows * (T + 1)
        np.testing.assert_array_equal(b["input_ids"].reshape(-1)[local_last[0::2]], eos)
        if h == 0:
            (la, ma), ga = grad_fn(params, None, _device(a))
            (lb, mb), gb = grad_fn(params, None, _device(b))
            np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-6)
            for k in ma:
                np.testing.assert_allclose(mb[k], ma[k], rtol=1e-5, atol=1e-5, err_msg=k)
            for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
                np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)


def test_hosts_pack_their_slices_to_one_row_count_and_global_slots(tok):
    path = common.asset("preference_train.jsonl")
    rows, slots = [], []
    for h in range(2):
        _, packed = _batches(
            tok, "preference", path, batch_size=8, process_index=h, process_count=2, row_multiple=2
        )
        rows.append([b["input_ids"].shape[0] for b in packed])
        b = packed[0]
        slots.append(set(np.unique(b["sequence_ids"][b["segment_ids"] > 0]).tolist()))
    assert rows[0] == rows[1] and all(r % 2 == 0 for r in rows[0])
    assert slots[0] == set(range(8)) and slots[1] == set(range(8, 16))  # host 1 holds pairs 4..7


def test_best_fit_and_buckets():
    rows = batching.best_fit([5, 0, 9, 3, 7, 1], 10)
    assert sorted(sum(([i] for r in rows for i in r), [])) == [0, 2, 3, 4, 5]  # the empty one left out
    assert all(sum([5, 0, 9, 3, 7, 1][i] for i in r) <= 10 for r in rows) and len(rows) == 3
    with pytest.raises(ValueError, match="does not fit"):
        batching.best_fit([11], 10)
    assert [batching.bucket_rows(n, 16) for n in (1, 2, 3, 7, 16)] == [2, 2, 4, 8, 16]
    assert [batching.bucket_rows(n, 16, multiple=8) for n in (1, 9)] == [8, 16]
    assert batching.bucket_rows(3, 3, multiple=2) == 4


def test_eval_pass_pads_the_last_batch_with_empty_examples(tok):
    path = common.asset("preference_test.jsonl")
    ds = pipeline.build_dataset(
        path, kind="preference", tokenizer=tok, max_length=T, max_prompt_length=24, packing=True
    )
    it = pipeline.BatchIterator(ds, 64, shuffle=False, repeat=False, pad_id=tok.pad_token_id)
    batches = list(it)
    last = batches[-1]
    n = len(ds) - 64 * (len(batches) - 1)
    np.testing.assert_array_equal(last["example_mask"], (np.arange(64) < n).astype(np.float32))
    assert set(np.unique(last["sequence_ids"][last["segment_ids"] > 0]).tolist()) == set(range(2 * n))


@pytest.mark.parametrize(
    "objective,hp,tied",
    [
        ("dpo", dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0, rpo_alpha=1.0), False),
        ("sft", {}, True),
        ("kto", dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.5), False),
    ],
)
def test_chunked_lm_head_equals_whole_logits(tok, objective, hp, tied):
    """`logits_chunk=N` (the LM head a chunk of positions at a time, as large vocabularies get by default)
    gives the whole-logits losses, metrics and gradients, padded and padding-free, tied head or not."""
    cfg = models.ModelConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
        tie_word_embeddings=tied,
        logits_chunk=-1,
    )
    params, ref = models.init_params(cfg, jax.random.key(0)), models.init_params(cfg, jax.random.key(1))
    kind = registry.get(objective).data
    path = common.asset(
        {"kto": "kto_train.jsonl", "sft": "sft_train.jsonl"}.get(kind, "preference_train.jsonl")
    )
    padded, packed = _batches(tok, kind, path, batch_size=8)
    grads = {}
    for chunk in (-1, 8):
        model = models.Transformer(dataclasses.replace(cfg, logits_chunk=chunk))
        fn = jax.jit(
            jax.value_and_grad(getattr(objectives, registry.get(objective).loss)(model, hp), has_aux=True)
        )
        grads[chunk] = [fn(params, ref, _device(b)) for b in (padded[0], packed[0])]
    for ((la, ma), ga), ((lb, mb), gb) in zip(grads[-1], grads[8]):
        np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-6)
        for k in ma:
            np.testing.assert_allclose(mb[k], ma[k], rtol=1e-5, atol=1e-5, err_msg=k)
        for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "objective,hp",
    [
        ("dpo", dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0, rpo_alpha=1.0)),
        ("sft", {}),
        ("kto", dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.5)),
    ],
)
def test_lm_head_at_loss_positions_equals_whole_rows(tok, model_and_params, objective, hp):
    """A batch with `head_index` (the LM head only at the loss mask's positions, gathered to the front of
    each row) gives the whole-row losses, metrics and gradients, padded and padding-free, whole or
    chunked logits; a share too small for some row leaves the batch without one."""
    model, params, ref = model_and_params
    cfg = model.config
    kind = registry.get(objective).data
    path = common.asset(
        {"kto": "kto_train.jsonl", "sft": "sft_train.jsonl"}.get(kind, "preference_train.jsonl")
    )
    batches = [b[0] for b in _batches(tok, kind, path, batch_size=8)]  # padded, padding-free
    fn = {
        chunk: jax.jit(
            jax.value_and_grad(
                getattr(objectives, registry.get(objective).loss)(
                    models.Transformer(dataclasses.replace(cfg, logits_chunk=chunk)), hp
                ),
                has_aux=True,
            )
        )
        for chunk in (-1, 8)
    }
    for b in batches:
        masks = [v for k, v in b.items() if k.endswith("loss_mask")]
        share = max(float(np.max(np.sum(m != 0, axis=1))) / m.shape[1] for m in masks)
        assert share < 0.9, share  # prompts leave positions to skip
        if max(int(np.max(np.sum(m != 0, axis=1))) for m in masks) > 8:  # KTO's completions are short
            assert batching.with_head_index(b, 1e-3) is None  # 8 slots a row: too few
        indexed = batching.with_head_index(b, share)
        width = indexed[next(k for k in indexed if k.endswith("head_index"))].shape[1]
        assert width < b[next(k for k in b if k.endswith("targets"))].shape[1]
        (la, ma), ga = fn[-1](params, ref, _device(b))
        for chunk in (-1, 8):
            (lb, mb), gb = fn[chunk](params, ref, _device(indexed))
            np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-6, err_msg=str(chunk))
            for k in ma:
                np.testing.assert_allclose(mb[k], ma[k], rtol=1e-5, atol=1e-5, err_msg=f"{chunk} {k}")
            for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
                np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6, err_msg=str(chunk))


def test_head_index_and_scatter_positions():
    """Hand-checked: each row's masked positions in order at the front, unused slots T, None when a row
    does not fit; the scatter puts values back (zeros elsewhere)."""
    from jaxalign import losses

    mask = np.array([[0, 1, 1, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
    idx = batching.head_index(mask, 3)
    np.testing.assert_array_equal(idx, [[1, 2, 4], [4, 5, 5], [5, 5, 5]])
    assert batching.head_index(mask, 2) is None
    vals = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    back = losses.scatter_positions(vals, idx, 5)
    np.testing.assert_array_equal(np.asarray(back), [[0, 1, 2, 0, 3], [0, 0, 0, 0, 4], [0, 0, 0, 0, 0]])
    assert batching.head_width(0.3, 128) == 40 and batching.head_width(1.0, 128) == 128
    assert batching.head_width(0.99, 100) == 100 and batching.head_width(0.01, 128) == 8
