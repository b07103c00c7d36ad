"""build_dataset kinds and BatchIterator: determinism, exact resume, host slicing, eval padding."""

import numpy as np
import pytest

from jaxalign.data import embedded
from jaxalign.data.pipeline import BatchIterator, TokenizedDataset, build_dataset

U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731


def toy(n=23):
    return TokenizedDataset(
        "sft",
        {
            "input_ids": np.arange(n)[:, None].repeat(3, 1).astype(np.int32),
            "loss_mask": np.ones((n, 3), np.float32),
        },
        {},
        3,
        None,
    )


def ids(batch):
    return batch["input_ids"][:, 0].tolist()


def test_shuffle_deterministic_and_epochs_cover_everything():
    a = [ids(next(BatchIterator(toy(), 4, seed=1))) for _ in range(2)]
    assert a[0] == a[1]
    it = BatchIterator(toy(24), 4, seed=1)
    epoch0 = sum((ids(next(it)) for _ in range(6)), [])
    epoch1 = sum((ids(next(it)) for _ in range(6)), [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(24)) and epoch0 != epoch1
    assert it.get_state()["epoch"] == 2
    other = BatchIterator(toy(24), 4, seed=2)
    assert sum((ids(next(other)) for _ in range(6)), []) != epoch0


def test_exact_resume():
    it = BatchIterator(toy(), 5, seed=3)
    for _ in range(7):  # crosses epoch boundaries (23 examples, batches of 5)
        next(it)
    state = it.get_state()
    expected = [ids(next(it)) for _ in range(6)]
    resumed = BatchIterator(toy(), 5, seed=3)
    resumed.set_state(dict(state))
    assert [ids(next(resumed)) for _ in range(6)] == expected
    with pytest.raises(ValueError, match="another dataset or seed"):
        BatchIterator(toy(), 5, seed=4).set_state(state)


@pytest.mark.parametrize("repeat", [True, False])
def test_host_slices_union_is_single_host(repeat):
    single = BatchIterator(toy(), 8, seed=0, repeat=repeat)
    hosts = [
        BatchIterator(toy(), 8, seed=0, process_index=i, process_count=4, repeat=repeat) for i in range(4)
    ]
    for _ in range(3):
        want = next(single)
        got = [next(h) for h in hosts]
        assert all(len(ids(g)) == 2 for g in got)
        for k in want:
            assert np.array_equal(np.concatenate([g[k] for g in got]), want[k])
        assert len({str(h.get_state()) for h in hosts}) == 1


def test_eval_single_pass_with_padding_and_weight():
    it = BatchIterator(toy(), 8, shuffle=False, repeat=False)
    batches = list(it)
    assert len(batches) == 3 == it.steps_per_epoch
    assert [b["weight"].tolist() for b in batches][-1] == [1] * 7 + [0]
    assert batches[-1]["loss_mask"][-1].sum() == 0
    seen = [i for b in batches for i, w in zip(ids(b), b["weight"]) if w]
    assert seen == list(range(23))


def test_batch_size_must_divide():
    with pytest.raises(ValueError, match="multiple of process_count"):
        BatchIterator(toy(), 6, process_count=4)


@pytest.fixture(scope="module")
def tok():
    return embedded.load_tokenizer()


def test_preference_batch_from_embedded(tok):
    ds = build_dataset(
        embedded.embedded_path("preference", "test"),
        kind="preference",
        tokenizer=tok,
        max_length=48,
        max_prompt_length=32,
    )
    b = next(BatchIterator(ds, 4, seed=0))
    keys = {
        f"{s}_{k}"
        for s in ("chosen", "rejected")
        for k in ("input_ids", "targets", "loss_mask", "positions", "segment_ids")
    }
    assert set(b) == keys and all(v.shape == (4, 48) for v in b.values())
    # Targets are the completion only: the first target is the first answer token after <|assistant|>.
    assistant = tok.convert_tokens_to_ids("<|assistant|>")
    for r in range(4):
        first = int(np.argmax(b["chosen_loss_mask"][r]))
        assert b["chosen_input_ids"][r, first] == assistant
        last = int(np.nonzero(b["chosen_loss_mask"][r])[0][-1])
        assert b["chosen_targets"][r, last] == tok.eos_token_id


def test_sft_packing_and_kinds(tok):
    rows = [{"messages": [U(f"what is {i} plus 1?"), A(f"{i} plus 1 is {i + 1}.")]} for i in range(10)]
    plain = build_dataset(rows, kind="sft", tokenizer=tok, max_length=32)
    packed = build_dataset(rows, kind="sft", tokenizer=tok, max_length=32, packing=True)
    assert len(packed) == len(plain) == 10 and packed.padding_free  # packed per batch, not up front
    batch = next(BatchIterator(packed, 10, shuffle=False, pad_id=tok.pad_token_id))
    assert batch["input_ids"].shape[0] < 10 and batch["example_mask"].tolist() == [1.0] * 10
    assert plain.arrays["loss_mask"].sum() == batch["loss_mask"].sum()
    texts = [{"text": f"{i} plus 1 is {i + 1}."} for i in range(10)]
    clm = build_dataset(texts, kind="clm", tokenizer=tok, max_length=32, packing=True)
    assert len(clm) < 10 and not clm.padding_free  # CLM packs documents up front
    whole = build_dataset(rows, kind="sft", tokenizer=tok, max_length=32, assistant_only_loss=False)
    assert whole.arrays["loss_mask"].sum() > plain.arrays["loss_mask"].sum()

    kto = build_dataset(
        [
            {"prompt": [U("q")], "completion": [A("a")], "label": True},
            {"prompt": [U("q")], "completion": [A("b")], "label": False},
        ],
        kind="kto",
        tokenizer=tok,
        max_length=16,
    )
    assert kto.arrays["label"].tolist() == [1.0, 0.0]

    clm = build_dataset([{"text": "3 plus 5 is 8. " * 6}], kind="clm", tokenizer=tok, max_length=16)
    assert len(clm) > 1  # a long text is split into chunks

    pc = build_dataset(
        [{"prompt": "User: 3 plus 5?\nAssistant:", "completion": " 8."}],
        kind="sft",
        tokenizer=tok,
        max_length=32,
    )
    n_completion = len(tok(" 8.", add_special_tokens=False)["input_ids"]) + 1
    assert pc.arrays["loss_mask"].sum() == n_completion


def test_prompt_batch_left_padded(tok):
    ds = build_dataset(
        embedded.embedded_path("prompts", "test"),
        kind="prompt",
        tokenizer=tok,
        max_length=48,
        max_prompt_length=40,
    )
    b = next(BatchIterator(ds, 4, shuffle=False, repeat=False))
    keys = {"prompt_ids", "prompt_positions", "prompt_segment_ids", "answer", "prompt", "where", "weight"}
    assert set(b) == keys  # prompt, where: the row itself and its place (an environment starts from it)
    assert b["prompt"][0] == ds.source[0]["prompt"] and b["where"][0].endswith("line 1")
    assert b["prompt_ids"].shape == (4, 40)
    assert (b["prompt_ids"][:, -1] == tok.convert_tokens_to_ids("<|assistant|>")).all()
    assert (b["prompt_segment_ids"][:, 0] == 0).all()  # the short prompts are padded on the left
    assert b["answer"] == [r["answer"] for r in [ds.source[i] for i in range(4)]]
    text = tok.decode(b["prompt_ids"][0][b["prompt_segment_ids"][0] == 1].tolist())
    assert text.startswith("<|bos|><|user|>") and text.endswith("<|assistant|>")


def _same_batches(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize(
    "kind,name", [("sft", "sft_train"), ("preference", "preference_train"), ("kto", "kto_train")]
)
@pytest.mark.parametrize("packing", [False, True])
def test_lazy_tokenization_gives_the_eager_batches(tok, kind, name, packing):
    """Tokenized batch by batch (`lazy=True`, what datasets of LAZY_MIN_ROWS rows or more get) or up
    front: the same batches, on one host and on two, for training and for one evaluation pass; the
    Prefetcher hands out the same batches again, and its state resumes where the consumer stopped."""
    import json
    from jaxalign.data.pipeline import LazyTokenizedDataset, Prefetcher

    with open(embedded.embedded_path(*name.split("_"))) as f:
        rows = [json.loads(line) for line in f.readlines()[:70]]
    kw = dict(kind=kind, tokenizer=tok, max_length=48, max_prompt_length=24, packing=packing)
    eager, lazy = build_dataset(rows, lazy=False, **kw), build_dataset(rows, lazy=True, **kw)
    assert isinstance(lazy, LazyTokenizedDataset) and not isinstance(eager, LazyTokenizedDataset)
    assert len(lazy) == len(eager) == 70
    for host in range(2):
        its = [
            BatchIterator(d, 16, seed=1, process_index=host, process_count=2, pad_id=tok.pad_token_id)
            for d in (eager, lazy)
        ]
        for _ in range(6):  # 96 examples: wraps into the second epoch
            _same_batches(next(its[0]), next(its[1]))
    evals = [
        list(BatchIterator(d, 32, shuffle=False, repeat=False, pad_id=tok.pad_token_id))
        for d in (eager, lazy)
    ]
    assert len(evals[0]) == len(evals[1]) == 3  # the last one padded
    for a, b in zip(*evals):
        _same_batches(a, b)

    plain = BatchIterator(eager, 16, seed=1, pad_id=tok.pad_token_id)
    ahead = Prefetcher(BatchIterator(lazy, 16, seed=1, pad_id=tok.pad_token_id), depth=3)
    for _ in range(3):
        _same_batches(next(plain), next(ahead))
    state = ahead.get_state()
    assert state == plain.get_state()  # not the state of the batches made ahead
    expected = next(plain)
    resumed = Prefetcher(BatchIterator(lazy, 16, seed=1, pad_id=tok.pad_token_id))
    resumed.set_state(state)
    _same_batches(expected, next(resumed))
    ahead.close(), resumed.close()


def test_prefetcher_raises_where_the_iterator_would(tok):
    from jaxalign.data.pipeline import Prefetcher

    rows = [{"messages": [U(f"what is {i} plus 1?"), A(f"{i} plus 1 is {i + 1}.")]} for i in range(10)]
    ds = build_dataset(rows, kind="sft", tokenizer=tok, max_length=32)
    it = Prefetcher(BatchIterator(ds, 4, shuffle=False, repeat=False))
    assert [b["weight"].tolist() for b in it] == [[1.0] * 4, [1.0] * 4, [1.0, 1.0, 0.0, 0.0]]


def test_length_buckets_cut_padded_batches_to_a_few_widths(tok):
    """packing=False with length_buckets: each batch is the full-width batch cut to the narrowest of
    T, T/2, T/4, T/8 that keeps every sequence of the global batch plus one padding column."""
    import json
    from jaxalign.data.pipeline import bucket_width

    assert [bucket_width(n, 512, 4) for n in (1, 64, 65, 129, 300, 512, 600)] == [
        64,
        64,
        128,
        256,
        512,
        512,
        512,
    ]
    with open(embedded.embedded_path("preference", "train")) as f:
        rows = [json.loads(line) for line in f.readlines()[:64]]
    ds = build_dataset(rows, kind="preference", tokenizer=tok, max_length=256, max_prompt_length=128)
    widths = set()
    for host in range(2):
        full = BatchIterator(ds, 16, seed=2, process_index=host, process_count=2)
        cut = BatchIterator(ds, 16, seed=2, process_index=host, process_count=2, length_buckets=4)
        for _ in range(4):
            a, b = next(full), next(cut)
            w = b["chosen_input_ids"].shape[1]
            widths.add(w)
            assert w in (32, 64, 128, 256)
            for k in a:
                np.testing.assert_array_equal(a[k][:, :w], b[k], err_msg=k)
                assert not a[k][:, w - 1 :].any() if k.endswith("segment_ids") else True, k
    assert max(widths) < 256  # the embedded pairs are short: never the full width
