"""Tool-use SFT rows (TRL's format): a `tools` column, assistant `tool_calls`, `role: tool` answers; the
embedded chat template renders them and only assistant turns (calls included) are trained on."""

import io
import json

import numpy as np
import pytest

from jaxalign.data import embedded, formats, inspect, templates
from jaxalign.errors import DataError

CALC = {
    "type": "function",
    "function": {
        "name": "calc",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}, "required": ["expr"]},
    },
}


def tool_row(arguments='{"expr": "123*45"}', tools=(CALC,)):
    return {
        "tools": json.dumps(list(tools)),  # the Hub's datasets often keep the schemas as a JSON string
        "messages": [
            {"role": "user", "content": "what is 123*45?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "calc", "arguments": arguments}}],
            },
            {"role": "tool", "name": "calc", "content": "5535"},
            {"role": "assistant", "content": "It is 5535."},
        ],
    }


def test_rows_normalize_schemas_and_arguments_to_objects():
    ex = formats.make_adapter("sft")(tool_row(), "f.jsonl line 1")
    assert ex["tools"] == [CALC]
    call = ex["messages"][1]
    assert call == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "calc", "arguments": {"expr": "123*45"}}}],
    }
    assert ex["messages"][2] == {"role": "tool", "content": "5535", "name": "calc"}
    bare = tool_row(tools=[CALC["function"]])  # a bare {"name", "parameters"} schema is wrapped
    assert formats.make_adapter("sft")(bare, "f.jsonl line 1")["tools"] == [CALC]


@pytest.mark.parametrize(
    "change,match",
    [
        (
            lambda r: r.pop("tools"),
            r"line 3: 'messages'\[1\] tool_calls: the row calls tools but has no 'tools'",
        ),
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].update(name="search"),
            r"calls 'search', which",
        ),
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="{expr: 1"),
            r"not valid JSON",
        ),
        (lambda r: r.update(tools="[]"), r"'tools' must be a non-empty list of function schemas"),
        (lambda r: r.update(tools=[{"description": "no name"}]), r"'tools'\[0\] must be a function schema"),
    ],
)
def test_bad_tool_rows_are_one_line_naming_the_row(change, match):
    row = tool_row()
    change(row)
    with pytest.raises(DataError, match=match):
        formats.make_adapter("sft")(row, "f.jsonl line 3")


def test_the_embedded_template_renders_tools_and_trains_on_the_assistant_turns_only():
    tok = embedded.load_tokenizer()
    ex = formats.make_adapter("sft")(tool_row(), "f.jsonl line 1")
    ids, mask = templates.encode_example(tok, ex)
    assert tok.decode(ids) == (
        '<|bos|><|tools|>calc(expr)<|user|>what is 123*45?<|assistant|><|call|>calc{"expr": "123*45"}<|eos|>'
        "<|tool|>5535<|assistant|>It is 5535.<|eos|>"
    )
    # The call (ending with EOS: the model stops so that the tool can answer) and the answer are targets;
    # the tool list, the user turn and the tool's result are context.
    assert tok.decode(ids[mask == 1]) == '<|call|>calc{"expr": "123*45"}<|eos|>It is 5535.<|eos|>'
    # A conversation without tools renders as the template always did.
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert tok.apply_chat_template(plain, tokenize=False) == "<|bos|><|user|>hi<|assistant|>hello<|eos|>"


def test_inspect_shows_a_tool_conversation(tmp_path):
    from configs import sft

    (tmp_path / "tools.jsonl").write_text(json.dumps(tool_row()) + "\n")
    c = sft.get_config()
    c.data.train, c.data.eval, c.data.max_length = str(tmp_path / "tools.jsonl"), "", 128
    out = io.StringIO()
    inspect.report(c, "train", out=out)
    text = out.getvalue()
    assert "format 'messages'" in text
    assert '«<|call|>calc{"expr": "123*45"}<|eos|>»<|tool|>5535<|assistant|>«It is 5535.<|eos|>»' in text
