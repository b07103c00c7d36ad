"""`jaxalign.data.load` / `read`: every documented format through format=auto, and data errors that name
the file and the 1-based line (item, row) with what was expected."""

import json
import re

import numpy as np
import pytest

from jaxalign import data
from jaxalign.data import embedded
from jaxalign.errors import ConfigError, DataError

U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731
S = lambda s: {"role": "system", "content": s}  # noqa: E731
HH_C = "\n\nHuman: what is 3 plus 5?\n\nAssistant: 3 plus 5 is 8."
HH_R = "\n\nHuman: what is 3 plus 5?\n\nAssistant: 3 plus 5 is 9."


@pytest.fixture(scope="module")
def tok():
    return embedded.load_tokenizer()


def write(path, rows, array=False):
    if path.suffix == ".parquet":
        import datasets

        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif array:
        path.write_text(json.dumps(rows, indent=1))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rendered(tok, ds, i=0, prefix=""):
    """(text of sequence i, text of its trained tokens) from a padded dataset."""
    a = ds.arrays
    seg = a[prefix + "segment_ids"][i] > 0
    ids = np.concatenate([a[prefix + "input_ids"][i][seg][:1], a[prefix + "targets"][i][seg]])
    trained = a[prefix + "targets"][i][seg][a[prefix + "loss_mask"][i][seg] > 0]
    return tok.decode(ids.tolist()), tok.decode(trained.tolist())


# (name, kind, rows, detected format, first sequence rendered, its trained part)
FORMATS = [
    (
        "text",
        "clm",
        [{"text": "3 plus 5 is 8."}],
        "text",
        "<|bos|>3 plus 5 is 8.<|eos|>",
        "3 plus 5 is 8.<|eos|>",
    ),
    (
        "messages",
        "sft",
        [{"messages": [U("q"), A("8.")]}],
        "messages",
        "<|bos|><|user|>q<|assistant|>8.<|eos|>",
        "8.<|eos|>",
    ),
    (
        "system turn",
        "sft",
        [{"messages": [S("Be terse."), U("q"), A("8.")]}],
        "messages",
        "<|bos|>Be terse.<|user|>q<|assistant|>8.<|eos|>",
        "8.<|eos|>",
    ),
    (
        "sharegpt",
        "sft",
        [
            {
                "conversations": [
                    {"from": "system", "value": "Be terse."},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "8."},
                ]
            }
        ],
        "sharegpt",
        "<|bos|>Be terse.<|user|>q<|assistant|>8.<|eos|>",
        "8.<|eos|>",
    ),
    (
        "alpaca",
        "sft",
        [{"instruction": "add", "input": "3 and 5", "output": "8."}],
        "alpaca",
        "<|bos|><|user|>add\n\n3 and 5<|assistant|>8.<|eos|>",
        "8.<|eos|>",
    ),
    (
        "alpaca no input",
        "sft",
        [{"instruction": "add 3 and 5", "input": "", "output": "8."}],
        "alpaca",
        "<|bos|><|user|>add 3 and 5<|assistant|>8.<|eos|>",
        "8.<|eos|>",
    ),
    (
        "prompt-completion",
        "sft",
        [{"prompt": "3 plus 5 is", "completion": " 8."}],
        "prompt_completion",
        "<|bos|>3 plus 5 is 8.<|eos|>",
        " 8.<|eos|>",
    ),
    (
        "prompt-completion conv.",
        "sft",
        [{"prompt": [U("q")], "completion": [A("8.")]}],
        "prompt_completion",
        "<|bos|><|user|>q<|assistant|>8.<|eos|>",
        "8.<|eos|>",
    ),
    (
        "preference",
        "preference",
        [{"prompt": "q", "chosen": " 8.", "rejected": " 9."}],
        "preference",
        "<|bos|>q 8.<|eos|>",
        " 8.<|eos|>",
    ),
    (
        "preference conv.",
        "preference",
        [{"prompt": [U("q")], "chosen": [A("8.")], "rejected": [A("9.")]}],
        "preference",
        "<|bos|><|user|>q<|assistant|>8.<|eos|>",
        "8.<|eos|>",
    ),
    (
        "ultrafeedback",
        "preference",
        [
            {
                "prompt": "q",
                "chosen": [U("q"), A("8.")],
                "rejected": [U("q"), A("9.")],
                "messages": [U("q"), A("8.")],
                "score_chosen": 8.0,
            }
        ],
        "preference",
        "<|bos|><|user|>q<|assistant|>8.<|eos|>",
        "8.<|eos|>",
    ),
    (
        "string prompt, answer-only lists",
        "preference",
        [{"prompt": "q", "chosen": [A("8.")], "rejected": [A("9.")]}],
        "preference",
        "<|bos|><|user|>q<|assistant|>8.<|eos|>",
        "8.<|eos|>",
    ),
    (
        "implicit conv.",
        "preference",
        [{"chosen": [U("q"), A("8.")], "rejected": [U("q"), A("9.")]}],
        "preference_implicit",
        "<|bos|><|user|>q<|assistant|>8.<|eos|>",
        "8.<|eos|>",
    ),
    (
        "hh-rlhf",
        "preference",
        [{"chosen": HH_C, "rejected": HH_R}],
        "preference_implicit",
        "<|bos|>" + HH_C + "<|eos|>",
        " 3 plus 5 is 8.<|eos|>",
    ),
    (
        "kto",
        "kto",
        [{"prompt": "q", "completion": " 8.", "label": True}],
        "kto",
        "<|bos|>q 8.<|eos|>",
        " 8.<|eos|>",
    ),
    (
        "kto conv.",
        "kto",
        [{"prompt": [U("q")], "completion": [A("8.")], "label": False}],
        "kto",
        "<|bos|><|user|>q<|assistant|>8.<|eos|>",
        "8.<|eos|>",
    ),
]


@pytest.mark.parametrize("name, kind, rows, fmt, text, trained", FORMATS, ids=[f[0] for f in FORMATS])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_format_loads_with_auto(tmp_path, tok, name, kind, rows, fmt, text, trained, suffix):
    path = write(tmp_path / f"train{suffix}", rows, array=suffix == ".json")
    assert data.read(str(path), kind=kind).format == fmt
    ds = data.load(str(path), kind=kind, tokenizer=tok, max_length=48, max_prompt_length=24)
    prefix = "chosen_" if kind == "preference" else ""
    assert rendered(tok, ds, 0, prefix) == (text, trained)


def test_prompt_kind_from_alpaca_sharegpt_and_hh(tmp_path, tok):
    rows = [
        {"instruction": "add 3 and 5", "output": "8."},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"chosen": HH_C, "rejected": HH_R},
    ]
    for i, row in enumerate(rows):
        ds = data.load([row], kind="prompt", tokenizer=tok, max_length=32, max_prompt_length=24)
        ids = ds.arrays["prompt_ids"][0][ds.arrays["prompt_segment_ids"][0] > 0]
        assert (
            tok.decode(ids.tolist())
            == [
                "<|bos|><|user|>add 3 and 5<|assistant|>",
                "<|bos|><|user|>q<|assistant|>",
                "<|bos|>\n\nHuman: what is 3 plus 5?\n\nAssistant:",
            ][i]
        )


def test_parquet_directory_of_shards_and_json_lines_in_json(tmp_path, tok):
    row = {"prompt": [U("q")], "chosen": [A("8.")], "rejected": [A("9.")]}
    d = tmp_path / "shards"
    d.mkdir()
    write(d / "train-00000-of-00003.parquet", [row] * 2)
    write(d / "train-00001-of-00003.jsonl", [row] * 3)
    write(d / "train-00002-of-00003.json", [row] * 4, array=True)
    write(d / "test.jsonl", [row])
    (tmp_path / "lines.json").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    assert len(data.load(str(d), kind="preference", tokenizer=tok, max_length=32)) == 9
    assert len(data.load(str(d), kind="preference", split="test", tokenizer=tok, max_length=32)) == 1
    assert len(data.read(str(tmp_path / "lines.json"), kind="preference")) == 2


def test_auto_format_is_resolved_per_file(tmp_path, tok):
    """A list of files may mix formats (SFT on messages + prompt_completion files); within one file the
    first row's format holds, so a row of another shape there is reported as missing a key."""
    conv = {"messages": [U("what is 3 plus 5?"), A("3 plus 5 is 8.")]}
    pc = {"prompt": [U("what is 3 plus 5?")], "completion": [A("3 plus 5 is 8.")]}
    a = write(tmp_path / "a.jsonl", [conv] * 2)
    b = write(tmp_path / "b.jsonl", [pc] * 3)
    rows = data.read([str(a), str(b)], kind="sft")
    assert (len(rows), rows.format) == (5, "messages+prompt_completion")
    ds = data.load([str(a), str(b)], kind="sft", tokenizer=tok, max_length=32)
    one = data.load(str(a), kind="sft", tokenizer=tok, max_length=32)
    assert len(ds) == 5
    # The same conversation in either format: the same tokens and the same trained tokens.
    for key in ("input_ids", "loss_mask"):
        if key in ds.arrays:
            np.testing.assert_array_equal(ds.arrays[key][4], one.arrays[key][0])
    mixed = write(tmp_path / "mixed.jsonl", [conv, pc])
    with pytest.raises(DataError, match=r"mixed.jsonl line 2: 'messages' is missing"):
        data.read(str(mixed), kind="sft")


def test_rows_from_read_are_not_read_again(tmp_path, tok):
    path = write(tmp_path / "a.jsonl", [{"text": "3 plus 5 is 8."}])
    rows = data.read(str(path), kind="clm")
    path.write_text("not json\n")
    assert len(data.load(rows, kind="clm", tokenizer=tok, max_length=16)) == 1


def test_tokenizer_without_chat_template_says_which_setting(tmp_path):
    t = embedded.load_tokenizer()
    t.chat_template = None
    path = write(tmp_path / "train.jsonl", [{"messages": [U("q"), A("8.")]}])
    with pytest.raises(
        DataError, match=re.escape(f"{path} line 1: conversational rows") + ".*set config.data.chat_template"
    ):
        data.load(str(path), kind="sft", tokenizer=t, max_length=16)
    template = tmp_path / "chat.jinja"
    template.write_text(embedded.CHAT_TEMPLATE)
    ds = data.load(str(path), kind="sft", tokenizer=t, max_length=16, chat_template=str(template))
    assert rendered(t, ds)[1] == "8.<|eos|>"
    with pytest.raises(ConfigError, match="config.data.chat_template='nope.jinja': no such file"):
        data.load(str(path), kind="sft", tokenizer=t, max_length=16, chat_template="nope.jinja")


def test_template_that_rejects_a_role_names_file_and_line(tmp_path):
    t = embedded.load_tokenizer()
    t.chat_template = embedded.CHAT_TEMPLATE.replace(
        "{% if message['role'] == 'system' %}{{ message['content'] }}{% elif", "{% if"
    )
    path = write(
        tmp_path / "train.jsonl", [{"messages": [U("q"), A("8.")]}, {"messages": [S("x"), U("q"), A("8.")]}]
    )
    with pytest.raises(
        DataError,
        match=re.escape(
            f"{path} line 2: the tokenizer's chat template rejects this "
            "conversation (roles: system, user, assistant): only system"
        ),
    ):
        data.load(str(path), kind="sft", tokenizer=t, max_length=16)


MSGS = {"messages": [U("q"), A("a")]}
PAIR = {"prompt": "q", "chosen": "a", "rejected": "b"}


# (file name, content: text, bytes or rows, kind, expected message after "<path> ")
ERRORS = [
    (
        "a.jsonl",
        "\n".join([json.dumps(MSGS)] * 6) + '\n{"messages": [\n',
        "sft",
        "line 7: invalid JSON (Expecting value at column 15); expected one JSON object per line",
    ),
    (
        "a.jsonl",
        json.dumps(MSGS).encode() + b"\n" + b'{"text": "caf\xe9"}\n',
        "sft",
        "line 2: invalid UTF-8 (byte 0xe9 at column 14); expected UTF-8 text",
    ),
    ("a.jsonl", "", "sft", ": no rows (the file is empty)"),
    ("a.jsonl", "\n \n\n", "sft", ": no rows (only blank lines)"),
    ("a.json", "[]", "sft", ": no rows (an empty array)"),
    (
        "a.jsonl",
        f"\n\n{json.dumps(MSGS)}\n\n[1, 2]\n",
        "sft",
        "line 5: expected a JSON object {...} per line, got an array",
    ),
    ("a.json", json.dumps([MSGS, MSGS, "x"]), "sft", "item 3: expected a JSON object {...}, got a string"),
    (
        "a.json",
        json.dumps([MSGS, {"messages": [U("q")]}]),
        "sft",
        "item 2: 'messages' has no assistant turn; expected at least one to train on",
    ),
    (
        "a.json",
        '[\n' + json.dumps(MSGS) + ',\n' + json.dumps(MSGS) + ',\n]',
        "sft",
        "line 4: invalid JSON (Expecting value at column 1); expected an array of JSON objects",
    ),
    (
        "a.jsonl",
        [
            {"chosen": HH_C, "rejected": HH_R},
            {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: bye\n\nAssistant: ciao"},
        ],
        "preference",
        "line 2: 'chosen' and 'rejected' are Human/Assistant transcripts whose human turns differ",
    ),
    (
        "a.jsonl",
        [
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: a\n\nAssistant: b",
                "rejected": "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: c\n\nAssistant: d",
            }
        ],
        "preference",
        "line 1: 'chosen' and 'rejected' are Human/Assistant transcripts that differ before their last",
    ),
    (
        "a.jsonl",
        [{"chosen": [U("a"), A("x"), U("b"), A("y")], "rejected": [U("a"), A("x"), U("c"), A("z")]}],
        "preference",
        "line 1: 'chosen' and 'rejected' differ before their last user turn",
    ),
    (
        "a.jsonl",
        [{"prompt": "q", "chosen": [U("q"), A("8.")], "rejected": [U("other"), A("9.")]}],
        "preference",
        "line 1: 'chosen' and 'rejected' share no prompt turns",
    ),
    (
        "a.jsonl",
        [PAIR, {"prompt": "q", "chosen": "a"}],
        "preference",
        "line 2: 'rejected' is missing; expected preference rows with 'prompt', 'chosen' and 'rejected'",
    ),
    ("a.parquet", [{"prompt": "q", "chosen": "a"}] * 2, "preference", "row 1: 'rejected' is missing"),
    (
        "a.jsonl",
        [{"instruction": "q", "input": 3, "output": "a"}],
        "sft",
        "line 1: 'input' must be a string, got a number",
    ),
    (
        "a.jsonl",
        [{"conversations": [{"from": "robot", "value": "x"}]}],
        "sft",
        "line 1: 'conversations'[0] is from 'robot'",
    ),
    (
        "a.jsonl",
        [{"prompt": {"q": 1}, "completion": "a"}],
        "sft",
        "line 1: 'prompt' must be a string or a list of messages, got an object",
    ),
    ("a.jsonl", [{"question": "q"}], "sft", "line 1: cannot tell the format from keys ['question']"),
    (
        "a.jsonl",
        [{"prompt": "q", "completion": "a", "label": "yes"}],
        "kto",
        "line 1: 'label' must be a boolean",
    ),
    ("a.txt", "hello\n", "clm", ": unsupported file type '.txt'; expected .jsonl, .json or .parquet"),
    ("missing.jsonl", None, "clm", ": no such file"),
    ("a.parquet", b"not parquet", "clm", ": not a readable parquet file"),
]


@pytest.mark.parametrize("name, content, kind, message", ERRORS, ids=[e[3][:40] for e in ERRORS])
def test_data_errors_name_file_and_place(tmp_path, name, content, kind, message):
    path = tmp_path / name
    if isinstance(content, list):
        write(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as e:
        data.read(str(path), kind=kind)
    text = str(e.value)
    assert text.startswith(f"{path}{'' if message.startswith(':') else ' '}{message}"), text
    assert "\n" not in text


def test_format_that_does_not_fit_the_kind_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^config.data.format='text': does not fit kind 'preference'"):
        data.read([{"text": "x"}], kind="preference", format="text")
