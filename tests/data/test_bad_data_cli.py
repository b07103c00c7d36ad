"""Bad data through the trainer's command line: exit code 2, one ``error: <file> line <N>: ...`` line on
stderr, no traceback, nothing in the workdir. Rows are read and checked before the tokenizer or model
loads. A few cases start a real process (`python -m jaxalign.main`, ~4-10 s of imports each); the others
run the same module in this process (the `cli` fixture of tests/conftest.py: the same flag parsing,
trainer and `run_main` error path, milliseconds each)."""

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731
MSGS = {"messages": [U("what is 3 plus 5?"), A("3 plus 5 is 8.")]}
PAIR = {"prompt": "what is 3 plus 5?", "chosen": " 8.", "rejected": " 9."}
KTO = {"prompt": "what is 3 plus 5?", "completion": " 8.", "label": True}
HH = "\n\nHuman: {}\n\nAssistant: {}"


def jsonl(*rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def parquet(columns):
    def write(path):
        pq.write_table(pa.table(columns), str(path))

    return write


# (config, file name, content: str | bytes | writer, expected stderr after "error: <path>")
CASES = {
    "invalid JSON mid-file": (
        "sft.py",
        "a.jsonl",
        jsonl(*[MSGS] * 6) + '{"messages": [\n' + jsonl(MSGS),
        " line 7: invalid JSON (Expecting value at column 15)",
    ),
    "bad UTF-8": (
        "sft.py",
        "a.jsonl",
        jsonl(MSGS, MSGS).encode() + b'{"text": "caf\xe9"}\n',
        " line 3: invalid UTF-8 (byte 0xe9 at column 14)",
    ),
    "empty file": ("sft.py", "a.jsonl", "", ": no rows (the file is empty)"),
    "blank lines": ("sft.py", "a.jsonl", "\n\n  \n", ": no rows (only blank lines)"),
    "truncated last line": (
        "dpo.py",
        "a.jsonl",
        jsonl(PAIR, PAIR) + '{"prompt": "q", "chos',
        " line 3: invalid JSON (Unterminated string starting at column 17)",
    ),
    "array on a jsonl line": (
        "sft.py",
        "a.jsonl",
        "\n" + jsonl(MSGS) + "[1, 2]\n",
        " line 3: expected a JSON object {...} per line, got an array",
    ),
    "json array in a .jsonl": (
        "sft.py",
        "a.jsonl",
        json.dumps([MSGS], indent=1),
        " line 1: invalid JSON (Expecting value at column 2); expected one JSON object "
        "per line; this looks like a JSON array: name the file .json",
    ),
    "json array item not object": (
        "sft.py",
        "a.json",
        json.dumps([MSGS, "hello"]),
        " item 2: expected a JSON object {...}, got a string",
    ),
    "json array trailing comma": (
        "sft.py",
        "a.json",
        "[\n" + json.dumps(MSGS) + ",\n]\n",
        " line 3: invalid JSON (Expecting value at column 1)",
    ),
    "json empty array": ("sft.py", "a.json", "[]", ": no rows (an empty array)"),
    "json array bad item": (
        "reward.py",
        "a.json",
        json.dumps([PAIR, {"prompt": "q", "rejected": "b"}]),
        " item 2: 'chosen' is missing; expected preference rows with 'prompt', 'chosen' and 'rejected'",
    ),
    "no assistant turn": (
        "sft.py",
        "a.jsonl",
        jsonl(MSGS, {"messages": [U("q")]}),
        " line 2: 'messages' has no assistant turn",
    ),
    "unknown role": (
        "sft.py",
        "a.jsonl",
        jsonl({"messages": [{"role": "bot", "content": "x"}]}),
        " line 1: 'messages'[0] has role 'bot'; expected one of ('system', 'user', 'assistant', 'tool')",
    ),
    "content not a string": (
        "sft.py",
        "a.jsonl",
        jsonl(MSGS, MSGS, {"messages": [U("q"), A(8)]}),
        " line 3: 'messages'[1] content must be a string, got a number",
    ),
    "messages is a string": (
        "sft.py",
        "a.jsonl",
        jsonl({"messages": "hello"}),
        " line 1: 'messages' must be a non-empty list of messages, got a string",
    ),
    "sharegpt unknown speaker": (
        "sft.py",
        "a.jsonl",
        jsonl({"conversations": [{"from": "robot", "value": "x"}]}),
        " line 1: 'conversations'[0] is from 'robot'",
    ),
    "alpaca without output": (
        "sft.py",
        "a.json",
        json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "q", "input": ""}]),
        " item 2: 'output' is missing or empty",
    ),
    "alpaca input not a string": (
        "sft.py",
        "a.jsonl",
        jsonl({"instruction": "q", "input": ["x"], "output": "a"}),
        " line 1: 'input' must be a string, got an array",
    ),
    "prompt-completion mixed": (
        "sft.py",
        "a.jsonl",
        jsonl({"prompt": [U("q")], "completion": "a"}),
        " line 1: mixes plain text and messages",
    ),
    "unknown keys": (
        "sft.py",
        "a.jsonl",
        jsonl({"question": "q", "answer": "a"}),
        " line 1: cannot tell the format from keys ['answer', 'question']",
    ),
    "pairs for sft": ("sft.py", "a.jsonl", jsonl(PAIR), " line 1: looks like 'preference'"),
    "empty text": (
        "pretrain.py",
        "a.jsonl",
        jsonl({"text": "a b"}, {"text": ""}),
        " line 2: 'text' must be a non-empty string, got empty",
    ),
    "text not a string": (
        "pretrain.py",
        "a.jsonl",
        jsonl({"text": 5}),
        " line 1: 'text' must be a non-empty string",
    ),
    "missing rejected": (
        "dpo.py",
        "a.jsonl",
        jsonl(PAIR, PAIR, {"prompt": "q", "chosen": "a"}),
        " line 3: 'rejected' is missing",
    ),
    "identical pair": (
        "dpo.py",
        "a.jsonl",
        jsonl({"chosen": HH.format("q", "a"), "rejected": HH.format("q", "a")}),
        " line 1: 'chosen' and 'rejected' are identical",
    ),
    "hh different human turns": (
        "dpo.py",
        "a.jsonl",
        jsonl({"chosen": HH.format("hi", "a"), "rejected": HH.format("bye", "b")}),
        " line 1: 'chosen' and 'rejected' are Human/Assistant transcripts whose human turns differ",
    ),
    "ultrafeedback different prompts": (
        "dpo.py",
        "a.jsonl",
        jsonl({"prompt": "q", "chosen": [U("q"), A("8.")], "rejected": [U("r"), A("9.")]}),
        " line 1: 'chosen' and 'rejected' share no prompt turns",
    ),
    "conversations diverge early": (
        "orpo.py",
        "a.jsonl",
        jsonl({"chosen": [U("a"), A("x"), U("b"), A("y")], "rejected": [U("a"), A("x"), U("c"), A("z")]}),
        " line 1: 'chosen' and 'rejected' differ before their last user turn",
    ),
    "prompt is an object": (
        "simpo.py",
        "a.jsonl",
        jsonl({"prompt": {"text": "q"}, "chosen": "a", "rejected": "b"}),
        " line 1: 'prompt' must be a string or a list of messages, got an object",
    ),
    "parquet missing column": (
        "dpo.py",
        "a.parquet",
        parquet({"prompt": ["q", "r"], "chosen": ["a", "b"]}),
        " row 1: 'rejected' is missing",
    ),
    "parquet corrupt": ("dpo.py", "a.parquet", b"PAR1 this is not parquet", ": not a readable parquet file"),
    "kto label not bool": (
        "kto.py",
        "a.jsonl",
        jsonl(KTO, dict(KTO, label="yes")),
        " line 2: 'label' must be a boolean (true = desirable), got 'yes'",
    ),
    "kto missing completion": (
        "kto.py",
        "a.jsonl",
        jsonl({"prompt": "q", "label": True}),
        " line 1: 'completion' is missing; expected kto rows with 'prompt', 'completion' and 'label'",
    ),
    "unsupported extension": (
        "sft.py",
        "a.csv",
        "prompt,completion\n",
        ": unsupported file type '.csv'; expected .jsonl, .json or .parquet",
    ),
}


# Cases run as a real `python -m jaxalign.main` process; the rest in this process (same code path).
IN_A_PROCESS = {"invalid JSON mid-file"}


def run_cli(config, workdir, *overrides, cli=None):
    """`python -m jaxalign.main --config=configs/<config> --workdir=<workdir> <overrides>`: in this process
    through the `cli` fixture when given, else as a subprocess."""
    args = [f"--config={os.path.join(ROOT, 'configs', config)}", f"--workdir={workdir}", *overrides]
    if cli is not None:
        return cli("jaxalign.main", *args)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "jaxalign.main", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def check_one_line_error(r, workdir, expected):
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n"), r.stderr[-3000:]
    assert r.stderr.startswith("error: " + expected), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    left = (
        [p for p in workdir.rglob("*") if p.is_file() and not p.name.endswith(".log")]
        if workdir.exists()
        else []
    )
    assert left == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_train_file(case, tmp_path, cli):
    config, name, content, expected = CASES[case]
    path = tmp_path / name
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    wd = tmp_path / "run"
    r = run_cli(config, str(wd), f"--config.data.train={path}", cli=None if case in IN_A_PROCESS else cli)
    check_one_line_error(r, wd, f"{path}{expected}")


def test_missing_file(tmp_path, cli):
    wd = tmp_path / "run"
    r = run_cli("sft.py", str(wd), f"--config.data.train={tmp_path / 'nope.jsonl'}", cli=cli)
    check_one_line_error(r, wd, "")  # the config check names the field: config.data.train='...': no such file
    assert f"{tmp_path / 'nope.jsonl'}" in r.stderr and "no such file" in r.stderr


def test_bad_shard_in_directory(tmp_path, cli):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train-00000-of-00002.jsonl").write_text(jsonl(MSGS, MSGS))
    (tmp_path / "d" / "train-00001-of-00002.jsonl").write_text(jsonl(MSGS, {"messages": [U("q"), U("r")]}))
    wd = tmp_path / "run"
    r = run_cli("sft.py", str(wd), f"--config.data.train={tmp_path / 'd'}", cli=cli)
    check_one_line_error(
        r, wd, f"{tmp_path / 'd' / 'train-00001-of-00002.jsonl'} line 2: 'messages' has no assistant turn"
    )


def test_bad_eval_file_fails_before_training(tmp_path, cli):
    path = tmp_path / "eval.jsonl"
    path.write_text(jsonl(PAIR) + "{oops}\n")
    wd = tmp_path / "run"
    r = run_cli("dpo.py", str(wd), f"--config.data.eval={path}", cli=cli)
    check_one_line_error(
        r, wd, f"{path} line 2: invalid JSON (Expecting property name enclosed in double quotes"
    )


def test_tokenizer_without_chat_template(tmp_path, cli):
    tok = tmp_path / "tok"
    shutil.copytree(os.path.join(ROOT, "jaxalign", "assets", "embedded", "tokenizer"), tok)
    (tok / "chat_template.jinja").unlink()
    path = tmp_path / "a.jsonl"
    path.write_text(jsonl(MSGS))
    wd = tmp_path / "run"
    r = run_cli("sft.py", str(wd), f"--config.data.train={path}", f"--config.model.tokenizer={tok}", cli=cli)
    check_one_line_error(
        r, wd, f"{path} line 1: conversational rows (lists of messages) need a chat template"
    )
    assert "set config.data.chat_template" in r.stderr
