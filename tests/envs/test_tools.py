"""The tool library, tool-call parsing in the chat templates' formats, and ToolEnv's answers."""

import pytest

from jaxalign.data import embedded
from jaxalign.envs import EpisodeError, ToolEnv, ToolError, calc, parse_tool_calls, tool_schema

SCHEMAS = [tool_schema(calc)]


def test_calc_words_signs_and_precedence():
    assert calc("23 times 47") == "1081"
    assert calc("2 + 3 * 4") == "14"
    assert calc("(2 + 3) * 4") == "20"
    assert calc("856 minus 489") == "367"
    assert calc("7 divided by 2") == "3.5"
    assert calc("8 / 2") == "4"
    for bad in ("", "import os", "2 ** 100", "__import__('os')", "1 / 0", "abc"):
        with pytest.raises(ToolError):
            calc(bad)


def test_schema_matches_the_embedded_rows():
    s = tool_schema(calc)
    assert s["function"]["name"] == "calc"
    assert s["function"]["parameters"]["properties"] == {"expr": {"type": "string"}}
    assert s["function"]["parameters"]["required"] == ["expr"]
    # The embedded rows' schema renders the same tools line (name and argument names).
    assert embedded.CALC_SCHEMA["function"]["parameters"]["properties"].keys() == {"expr"}


@pytest.mark.parametrize(
    "text",
    [
        '<|call|>calc{"expr": "2 plus 3"}<|eos|>',
        'let me see<tool_call>\n{"name": "calc", "arguments": {"expr": "2 plus 3"}}\n</tool_call>',
        '[TOOL_CALLS][{"name": "calc", "arguments": {"expr": "2 plus 3"}}]',
    ],
)
def test_parse_each_format(text):
    content, calls, errors = parse_tool_calls(text, SCHEMAS)
    assert calls == [("calc", {"expr": "2 plus 3"})] and errors == []
    assert "calc" not in content


def test_parse_malformed_calls_are_errors_not_crashes():
    cases = {
        '<|call|>calc{"expr": "2 plus 3"': "not a JSON object",
        '<|call|>nope{"expr": "1"}': "unknown tool",
        '<|call|>calc{"x": "1"}': "missing argument",
        '<|call|>calc{"expr": 3}': "must be of type string",
        '<|call|>{"expr": "1"}': "names no tool",
        "<tool_call>{oops}</tool_call>": "no JSON object",
        '[TOOL_CALLS][{"arguments": {}}]': "needs",
    }
    for text, why in cases.items():
        _, calls, errors = parse_tool_calls(text, SCHEMAS)
        assert calls == [] and len(errors) == 1 and why in errors[0], (text, errors)
    assert parse_tool_calls("2 plus 3 is 5.<|eos|>", SCHEMAS) == ("2 plus 3 is 5.<|eos|>", [], [])


def test_tool_env_turns():
    env = ToolEnv()
    convs = env.reset(
        [{"prompt": [{"role": "user", "content": "what is 23 times 47?"}], "answer": "1081"}] * 4
    )
    assert convs[0] == [{"role": "user", "content": "what is 23 times 47?"}]
    out = env.step(
        convs,
        [
            '<|call|>calc{"expr": "23 times 47"}<|eos|>',
            '<|call|>calc{"expr": "23 times"}<|eos|>',  # the tool rejects it: an error the model reads
            "the answer is 1081.<|eos|>",
            None,  # already done
        ],
    )
    assert out[0] == ([{"role": "tool", "content": "1081"}], 0.0, {"calls": 1, "errors": 0})
    assert out[1][0][0]["content"].startswith("error: cannot evaluate") and out[1][2] == {
        "calls": 1,
        "errors": 1,
    }
    assert out[2] == (None, 1.0, {"calls": 0, "errors": 0})
    assert out[3][0] is None
    s = env.summarize({"calls": [1, 1, 0, 2], "errors": [0, 1, 0, 0]})
    assert s == {
        "tools/call_rate": 0.75,
        "tools/calls_per_episode": 1.0,
        "tools/errors": 0.25,
        "tools/well_formed": 0.75,
    }


def broken_tool(expr: str) -> str:
    """A tool with a bug."""
    raise KeyError(expr)


def test_a_tool_that_raises_names_the_episode():
    env = ToolEnv(tools="tests.envs.test_tools:broken_tool")
    env.reset([{"prompt": "q", "answer": "1"}] * 2)
    with pytest.raises(EpisodeError) as e:
        env.step([[], []], [None, '<|call|>broken_tool{"expr": "1"}'])
    assert e.value.index == 1 and "tests.envs.test_tools:broken_tool raised KeyError" in str(e.value)
