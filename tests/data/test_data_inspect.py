"""`python -m jaxalign.data.inspect`: format, a marked example, length statistics and truncation counts."""

import io
import json
import os
import subprocess
import sys

import pytest

from jaxalign.data import embedded, inspect

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def sft_config(train):
    from configs import sft

    c = sft.get_config()
    c.data.train, c.data.eval, c.data.max_length = str(train), "", 16
    return c


def test_report_shows_format_mask_lengths_and_truncation(tmp_path):
    rows = [
        {"instruction": "add 3 and 5", "output": "8."},
        {"instruction": "add 30 and 50 and then add 7 to it please", "output": "it is 87, I am quite sure."},
    ]
    (tmp_path / "alpaca.json").write_text(json.dumps(rows))
    out = io.StringIO()
    inspect.report(sft_config(tmp_path / "alpaca.json"), "train", out=out)
    text = out.getvalue()
    assert "2 rows, format 'alpaca' (data.format='auto'), kind 'sft'" in text
    assert "'<|bos|><|user|>add 3 and 5<|assistant|>«8.<|eos|>»'" in text
    tok = embedded.load_tokenizer()
    lengths = [
        len(
            tok(
                tok.apply_chat_template(
                    [
                        {"role": "user", "content": r["instruction"]},
                        {"role": "assistant", "content": r["output"]},
                    ],
                    tokenize=False,
                ),
                add_special_tokens=False,
            )["input_ids"]
        )
        for r in rows
    ]
    assert f"total length: min {min(lengths)}, median" in text and f"max {max(lengths)} tokens" in text
    assert "truncated: 1 of 2 examples (data.max_length=16" in text


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"instruction": "q", "output": "a"}\n{"instruction": "q", "output": 5}\n',
            "line 2: 'output' must be a string, got a number",
        ),
    ],
)
def test_bad_data_is_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxalign.data.inspect",
            f"--config={ROOT}/configs/sft.py",
            f"--config.data.train={path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr == f"error: {path} {message}\n"
    assert r.stdout == ""
