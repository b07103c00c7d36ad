"""jaxalign.chat: prompts keep each model's own conversation, equal models answer equally, commands,
truncation to the model's positions, and one-line errors (exit 2) for a directory that is not a model."""

import io
import sys

import pytest

from jaxalign import chat as chat_lib
from jaxalign import defaults
from jaxalign.errors import UserError

SFT = defaults.asset("checkpoints", "sft")
N = 16  # max_new_tokens everywhere here: one compiled sampler shared by the tests and the CLI runs


@pytest.fixture(scope="module")
def two_sft():
    return [chat_lib.ChatModel.load(SFT, name) for name in ("a", "b")]


def test_settings_set_and_bad_values():
    s = chat_lib.Settings().updated("temperature=0.7").updated("top_k=5")
    assert (s.temperature, s.top_k, s.top_p) == (0.7, 5, 1.0)
    for bad, why in [
        ("temperature=-1", "must be >= 0"),
        ("top_p=2", "(0, 1]"),
        ("top_k=x", "expected an integer"),
        ("bogus=1", "expected name=value"),
        ("temperature", "expected name=value"),
    ]:
        with pytest.raises(UserError, match=why.replace("(", r"\(").replace("]", r"\]")):
            s.updated(bad)


def test_own_and_shared_history_messages():
    turns = [chat_lib.Turn("hi", {"a": "A1", "b": "B1"}), chat_lib.Turn("more", {"a": "A2", "b": "B2"})]
    own = chat_lib.conversation_messages(turns, "next", "b", system="be brief")
    assert [m["content"] for m in own] == ["be brief", "hi", "B1", "more", "B2", "next"]
    assert [m["role"] for m in own] == ["system", "user", "assistant", "user", "assistant", "user"]
    shared = chat_lib.conversation_messages(turns, "next", "b", shared_history="a")
    assert [m["content"] for m in shared] == ["hi", "A1", "more", "A2", "next"]


def test_fit_prompt_drops_oldest_turns_keeps_system_and_last():
    def encode(messages):  # one token per word
        return [w for m in messages for w in m["content"].split()]

    msgs = [{"role": "system", "content": "s"}]
    for i in range(3):
        msgs += [{"role": "user", "content": f"u{i} x x"}, {"role": "assistant", "content": f"a{i} y"}]
    msgs.append({"role": "user", "content": "last q"})
    assert chat_lib.fit_prompt(encode, msgs, 100) == (encode(msgs), 0)
    ids, dropped = chat_lib.fit_prompt(encode, msgs, 8)
    assert (ids, dropped) == (["s", "u2", "x", "x", "a2", "y", "last", "q"], 2)
    assert chat_lib.fit_prompt(encode, msgs, 2) == (["last", "q"], 3)  # the last turn alone: its end


def test_default_names_and_prompt_widths():
    assert [chat_lib.padded_length(n) for n in (1, 32, 33, 100)] == [32, 32, 64, 128]
    assert chat_lib.default_names(["r/sft", "r/sft"]) == ["sft", "sft#2"]
    assert chat_lib.default_names(["runs/x/hf", "runs/y/hf/"]) == ["x/hf", "y/hf"]


def test_two_turns_equal_models_keep_own_history(two_sft):
    chat = chat_lib.Chat(two_sft, chat_lib.Settings(max_new_tokens=N))
    first = dict(chat.answers("what is 2 plus 3?"))
    assert first["a"] == first["b"] and "5" in first["a"]  # greedy, same weights: the same answer

    # the second turn's prompt holds the first turn and this model's own answer to it
    model = two_sft[0]
    msgs = chat.messages(model, "and 4 times 2?")
    assert [m["content"] for m in msgs] == ["what is 2 plus 3?", first["a"], "and 4 times 2?"]
    ids, dropped = chat.prompt_ids(model, "and 4 times 2?")
    text = model.tokenizer.decode(ids)
    assert dropped == 0 and "what is 2 plus 3?" in text and first["a"] in text
    assert text.endswith("and 4 times 2?<|assistant|>")

    second = dict(chat.answers("and 4 times 2?"))
    assert second["a"] == second["b"]
    assert [t.user for t in chat.turns] == ["what is 2 plus 3?", "and 4 times 2?"]
    chat.reset()
    assert chat.turns == [] and chat.messages(model, "x") == [{"role": "user", "content": "x"}]


def test_long_conversation_is_cut_and_said_once(two_sft):
    notes = []
    chat = chat_lib.Chat(two_sft, chat_lib.Settings(max_new_tokens=100), notify=notes.append)
    chat.turns = [
        chat_lib.Turn(f"what is {i} plus 1?", {"a": f"{i} plus 1 is {i + 1}.", "b": "ok"}) for i in range(5)
    ]
    prompts = chat.prompts("what is 9 plus 1?")
    assert all(len(p) <= 128 - 100 for p in prompts)
    assert len(notes) == 1 and "a, b" in notes[0] and "said once" in notes[0]
    chat.prompts("what is 9 plus 2?")
    assert len(notes) == 1
    with pytest.raises(UserError, match="max_new_tokens=128: must be below a's max_position_embeddings"):
        chat.set("max_new_tokens=128")


def _run(cli, monkeypatch, stdin, *args):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return cli("jaxalign.chat", *args)


def test_cli_piped_conversation_and_commands(cli, monkeypatch):
    stdin = (
        "what is 2 plus 3?\n/set seed=3 top_p=0.9\n/set top_p=2\n/reset\nwhat is 2 plus 3?\n/quit\nnever\n"
    )
    r = _run(cli, monkeypatch, stdin, f"--checkpoint={SFT},{SFT}", f"--max_new_tokens={N}", "--layout=rows")
    assert r.returncode == 0, r.stderr
    blocks = r.stdout.split(">>> ")
    assert blocks[0] == ""
    first = blocks[1].splitlines()
    assert first[0] == "what is 2 plus 3?" and first[1] == "--- sft" and first[3] == "--- sft#2"
    assert first[2] == first[4] and "5" in first[2]  # greedy, the same weights: the same answer
    assert "(temperature=0.0 top_p=0.9 top_k=0 max_new_tokens=16 seed=3)" in blocks[2]
    assert r.stderr == "error: /set top_p=2: must be in (0, 1] (1 = off)\n"  # and the chat goes on
    assert "(temperature=0.0 top_p=0.9 top_k=0 max_new_tokens=16 seed=3)" in blocks[3]
    assert "(conversation cleared)" in blocks[4]
    assert blocks[5] == blocks[1]  # a fresh conversation: the same prompt, the same greedy answers
    assert blocks[6].strip() == "/quit" and "never" not in r.stdout


def test_cli_columns_layout(cli, monkeypatch):
    r = _run(
        cli,
        monkeypatch,
        "what is 2 plus 3?\n",
        f"--checkpoint={SFT},{SFT}",
        "--names=x,y",
        f"--max_new_tokens={N}",
        "--layout=columns",
    )
    assert r.returncode == 0, r.stderr
    header, rule, answer = r.stdout.splitlines()[1:4]
    assert header.startswith("x ") and header.endswith("│ y") and rule.endswith("│ ─")
    left, right = (c.strip() for c in answer.split("│"))
    assert left == right and "5" in left


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint={tmp}"], "error: {tmp}: no config.json;"),
        (["--checkpoint={tmp}/nope"], "error: {tmp}/nope: no such directory;"),
        (["--names=a,b"], "error: --names=a,b: expected 1 non-empty names"),
        (["--temperature=-1"], "error: --temperature=-1.0: must be >= 0"),
        (["--shared_history=zz"], "error: --shared_history=zz: no model of that name; names: sft"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(cli, monkeypatch, tmp_path, args, message):
    r = _run(cli, monkeypatch, "hi\n", *(a.format(tmp=tmp_path) for a in args))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(message.format(tmp=tmp_path)), r.stderr
    assert r.stdout == ""
