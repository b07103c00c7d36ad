"""Format adapters: detection, normalization, implicit prompts, and bad rows named by file and line."""

import json
import re

import pytest

from jaxalign.data import embedded, formats
from jaxalign.data.pipeline import build_dataset
from jaxalign.errors import DataError

U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731


def adapt(kind, row, fmt="auto"):
    return formats.make_adapter(kind, fmt)(row, "row 0")


@pytest.mark.parametrize(
    "row, fmt",
    [
        ({"text": "hi"}, "text"),
        ({"messages": [U("q"), A("a")]}, "messages"),
        ({"prompt": "q", "completion": "a"}, "prompt_completion"),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "preference"),
        ({"chosen": "x a", "rejected": "x b"}, "preference_implicit"),
        ({"prompt": "q", "completion": "a", "label": True}, "kto"),
        ({"prompt": [U("q")], "answer": "8"}, "prompt"),
        ({"prompt": "q", "chosen": None, "rejected": None, "completion": "a"}, "prompt_completion"),
    ],
)
def test_detect_format(row, fmt):
    assert formats.detect_format(row) == fmt


def test_text_and_sft_formats():
    assert adapt("clm", {"text": "hello"}) == {"text": "hello"}
    assert adapt("sft", {"messages": [U("q"), A("a")], "extra": 1}) == {"messages": [U("q"), A("a")]}
    assert adapt("sft", {"prompt": "q", "completion": "a"}) == {"prompt": "q", "completion": "a"}
    conv = adapt("sft", {"prompt": [U("q")], "completion": [A("a")]})
    assert conv == {"prompt": [U("q")], "completion": [A("a")]}


def test_preference_explicit_strings_and_messages():
    assert adapt("preference", {"prompt": "q", "chosen": "a", "rejected": "b"}) == {
        "prompt": "q",
        "chosen": "a",
        "rejected": "b",
    }
    row = {"prompt": [U("q")], "chosen": [A("a")], "rejected": [A("b")]}
    assert adapt("preference", row) == row


def test_preference_implicit_hh_style():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is 3 plus 5?\n\nAssistant: 8."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is 3 plus 5?\n\nAssistant: 9, I think."
    ex = adapt("preference", {"chosen": chosen, "rejected": rejected})
    assert ex["prompt"] == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is 3 plus 5?\n\nAssistant:"
    assert ex["chosen"] == " 8." and ex["rejected"] == " 9, I think."


def test_preference_implicit_shared_answer_prefix_stays_in_prompt_only_up_to_assistant():
    # The common prefix runs into the answer ("3 plus 5 is "): the prompt still ends at "Assistant:".
    ex = adapt(
        "preference",
        {
            "chosen": "Human: q\n\nAssistant: 3 plus 5 is 8.",
            "rejected": "Human: q\n\nAssistant: 3 plus 5 is 9.",
        },
    )
    assert ex["prompt"] == "Human: q\n\nAssistant:"
    assert ex["chosen"] == " 3 plus 5 is 8."


def test_preference_implicit_conversational():
    chosen = [U("hi"), A("hello"), U("what is 3 plus 5?"), A("8.")]
    rejected = [U("hi"), A("hello"), U("what is 3 plus 5?"), A("9.")]
    ex = adapt("preference", {"chosen": chosen, "rejected": rejected})
    assert ex == {"prompt": chosen[:3], "chosen": [A("8.")], "rejected": [A("9.")]}


def test_kto_and_prompt_formats():
    ex = adapt("kto", {"prompt": [U("q")], "completion": [A("a")], "label": False})
    assert ex["label"] is False
    assert adapt("prompt", {"prompt": [U("q")], "answer": "8"}) == {"prompt": [U("q")], "answer": "8"}
    # A conversation gives its prompt: the trailing assistant turn is dropped.
    assert adapt("prompt", {"messages": [U("q"), A("a")]})["prompt"] == [U("q")]
    assert adapt("prompt", {"prompt": "q", "chosen": "a", "rejected": "b"})["prompt"] == "q"


@pytest.mark.parametrize(
    "kind, row, message",
    [
        ("preference", {"prompt": "q", "chosen": "a"}, "'rejected' is missing"),
        ("sft", {"prompt": "q", "chosen": "a", "rejected": "b"}, "looks like 'preference'"),
        ("preference", {"chosen": "same", "rejected": "same"}, "identical"),
        (
            "preference",
            {"prompt": [U("q")], "chosen": "a", "rejected": [A("b")]},
            "mixes plain text and messages",
        ),
        ("sft", {"messages": [U("q")]}, "no assistant turn"),
        ("sft", {"messages": [{"role": "bot", "content": "x"}]}, "role 'bot'"),
        ("sft", {"messages": [U(3)]}, "content must be a string"),
        ("kto", {"prompt": "q", "completion": "a", "label": "yes"}, "'label' must be a bool"),
        ("clm", {"text": ""}, "non-empty"),
    ],
)
def test_bad_rows(kind, row, message):
    with pytest.raises(ValueError, match=message) as e:
        adapt(kind, row)
    assert str(e.value).startswith("row 0: ")


def test_format_kind_mismatch():
    with pytest.raises(ValueError, match="does not fit kind"):
        formats.make_adapter("preference", "text")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_bad_row_names_file_and_line(tmp_path):
    rows = [{"prompt": [U("q")], "chosen": [A("a")], "rejected": [A("b")]} for _ in range(20)]
    rows[16] = {"prompt": [U("q")], "rejected": [A("b")]}  # line 17
    _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(
        DataError,
        match=r"^"
        + re.escape(str(tmp_path / "train.jsonl"))
        + r" line 17: 'chosen' is missing; expected preference rows with 'prompt', 'chosen' and "
        r"'rejected'$",
    ):
        build_dataset(
            str(tmp_path / "train.jsonl"),
            kind="preference",
            tokenizer=embedded.load_tokenizer(),
            max_length=32,
        )


def test_bad_row_in_second_file_of_directory(tmp_path):
    good = {"messages": [U("q"), A("a")]}
    _write_jsonl(tmp_path / "train-0.jsonl", [good] * 3)
    _write_jsonl(tmp_path / "train-1.jsonl", [good, {"messages": [U("q"), U("again")]}])
    _write_jsonl(tmp_path / "test.jsonl", [good])  # other split: not read
    with pytest.raises(ValueError, match=r"train-1\.jsonl line 2: 'messages' has no assistant turn"):
        build_dataset(str(tmp_path), kind="sft", tokenizer=embedded.load_tokenizer(), max_length=32)
    ds = build_dataset(
        str(tmp_path), kind="sft", split="test", tokenizer=embedded.load_tokenizer(), max_length=32
    )
    assert len(ds) == 1


def test_parquet_source(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"text": "3 plus 5 is 8."}, {"text": "2 times 2 is 4."}]).to_parquet(
        str(tmp_path / "train.parquet")
    )
    ds = build_dataset(
        str(tmp_path / "train.parquet"), kind="clm", tokenizer=embedded.load_tokenizer(), max_length=16
    )
    assert len(ds) == 2


def test_tfds_source(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class EmbeddedToyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(5):
                yield i, {"text": f"{i} plus 1 is {i + 1}."}

    EmbeddedToyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    ds = build_dataset(
        "tfds:embedded_toy_text",
        kind="clm",
        tokenizer=embedded.load_tokenizer(),
        max_length=16,
        data_dir=str(tmp_path),
    )
    assert len(ds) == 5
    texts = {
        embedded.load_tokenizer().decode(r[s == 1].tolist())
        for r, s in zip(ds.arrays["input_ids"], ds.arrays["segment_ids"])
    }
    assert "<|bos|>2 plus 1 is 3." in texts
