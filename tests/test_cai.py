"""Constitutional AI data (jaxalign.cai): constitution files, the critique / revision conversations, a tiny
run on the embedded model whose rows the trainers read, resuming, bad input as one line."""

import json
import os

import pytest

from jaxalign import cai, data
from jaxalign.errors import DataError

# The tiny run every test shares (one compilation of the sampler per prompt width).
TINY = {"rounds": 2, "max_prompts": 3, "batch_size": 2, "max_new_tokens": 6, "seed": 3}


def _write(path, obj):
    path.write_text(json.dumps(obj, indent=1))
    return str(path)


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_shipped_constitution_and_the_recipes_layouts(tmp_path):
    c = cai.load_constitution(cai.default_constitution())
    assert [p.name for p in c.principles] == ["no_secrets", "help_if_safe", "right_math"]
    assert len(c.few_shot) == 2
    for conversation in c.few_shot:  # ask, answer, critique request, critique, revision request, revision
        assert [m["role"] for m in conversation] == ["user", "assistant"] * 3
        assert {conversation[2]["content"], conversation[4]["content"]} <= {
            s for p in c.principles for s in (p.critique, p.revision)
        }
    # The public recipes' list of {"critic", "revision"}, and a plain list of named principles.
    hf = cai.load_constitution(
        _write(
            tmp_path / "hf.json", {"constitutions": [{"critic": "c1", "revision": "r1"}], "system_chat": []}
        )
    )
    assert hf.principles == (cai.Principle("principle 1", "c1", "r1"),) and hf.few_shot == ()
    plain = cai.load_constitution(
        _write(tmp_path / "plain.json", [{"name": "a", "critique": "c", "revision": "r"}])
    )
    assert plain.principles == (cai.Principle("a", "c", "r"),)
    # The draw is seeded per (seed, prompt, round): the same every time, and every principle comes up.
    draws = [cai.draw_principle(c, 0, i, r).name for i in range(30) for r in range(2)]
    assert draws == [cai.draw_principle(c, 0, i, r).name for i in range(30) for r in range(2)]
    assert set(draws) == {p.name for p in c.principles}


@pytest.mark.parametrize(
    "text, line, what",
    [
        ('{"constitutions": {\n "a": {"critique": "c"}}}', 2, "principle 'a' has no \"revision\""),
        ('{"constitutions": [\n{"critic": "c", "revision": "r"},\n{"revision": "r"}]}', 3, 'no "critique"'),
        (
            '{"constitutions": {"a":\n {"critique": "c", "revision": " "}}}',
            2,
            '"revision" must be a non-empty',
        ),
        ('{"principles": []}', 1, 'no "constitutions"'),
        ('{"constitutions": []}', 1, "no principles"),
        (
            '{"constitutions": [{"critic": "c", "revision": "r"}],\n"system_chat": [[\n{"role": "bot"}]]}',
            3,
            "messages",
        ),
        ('{"constitutions": [\n{"critic": "c",}]}', 2, "invalid JSON"),
    ],
)
def test_bad_constitution_names_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        cai.load_constitution(str(path))
    assert str(e.value).startswith(f"{path} line {line}: ") and what in str(e.value), str(e.value)


def test_conversations_hold_few_shot_answer_and_requests():
    c = cai.load_constitution(cai.default_constitution())
    p = c.principles[0]
    prompt = [{"role": "system", "content": "be nice."}, {"role": "user", "content": "tell me eve's pin."}]
    crit = cai.critique_messages(prompt, "eve's pin is 42.", p, c.few_shot)
    shots = [m for conversation in c.few_shot for m in conversation]
    assert crit[0] == prompt[0]  # the prompt's system turn stays first
    assert crit[1 : 1 + len(shots)] == shots
    assert crit[1 + len(shots) :] == [
        prompt[1],
        {"role": "assistant", "content": "eve's pin is 42."},
        {"role": "user", "content": p.critique},
    ]
    rev = cai.revision_messages("tell me eve's pin.", "eve's pin is 42.", p, "it tells a pin.", c.few_shot)
    assert rev[: len(shots)] == shots  # a string prompt is one user turn
    assert rev[len(shots) :] == [
        {"role": "user", "content": "tell me eve's pin."},
        {"role": "assistant", "content": "eve's pin is 42."},
        {"role": "user", "content": p.critique},
        {"role": "assistant", "content": "it tells a pin."},
        {"role": "user", "content": p.revision},
    ]

    # Too long: the oldest few-shot examples go first, then only the last tokens are kept.
    def encode(messages):
        return [len(m["content"]) for m in messages]  # one "token" per message

    def build(few):
        return cai.critique_messages("q", "a", p, few)

    assert cai.fit_conversation(encode, build, c.few_shot, 100) == (encode(build(c.few_shot)), 0, False)
    assert cai.fit_conversation(encode, build, c.few_shot, 9) == (encode(build(c.few_shot[1:])), 1, False)
    ids, left_out, cut = cai.fit_conversation(encode, build, c.few_shot, 2)
    assert (ids, left_out, cut) == (encode(build(()))[-2:], 2, True)


def test_tiny_run_rows_are_read_by_the_trainers_and_resume_gives_the_same_rows(tmp_path):
    lines = []
    whole = cai.run_cai(str(tmp_path / "whole"), log=lines.append, note=lines.append, **TINY)
    assert whole["complete"] and whole["sft_rows"] == 3
    assert whole["preference_pairs"] + whole["skipped_equal"] == 3
    assert sum(line.startswith("[cai] batch ") and "ETA" in line for line in lines) == 2  # one per batch
    assert any("few-shot examples are left out" in line for line in lines)  # 128 positions: said once
    out = tmp_path / "whole"
    assert len(data.read(str(out / "sft.jsonl"), kind="sft")) == 3
    if whole["preference_pairs"]:
        assert len(data.read(str(out / "preferences.jsonl"), kind="preference")) == whole["preference_pairs"]
    traces = _rows(out / "critiques.jsonl")
    assert [s["answer"] for s in _rows(out / "sft.jsonl")] == ["REFUSE", "2", "REFUSE"]  # carried over
    assert [t["index"] for t in traces] == [0, 1, 2]
    sft = _rows(out / "sft.jsonl")
    for t, s in zip(traces, sft):
        assert len(t["rounds"]) == 2 and t["prompt"] == s["prompt"]
        assert s["completion"] == [{"role": "assistant", "content": t["final"]}]
    for p in _rows(out / "preferences.jsonl"):
        assert p["chosen"] != p["rejected"]

    # Interrupted after one batch, the second one half written: the rerun cuts it and goes on.
    part = tmp_path / "part"
    first = cai.run_cai(str(part), log=lines.append, note=lines.append, max_batches=1, **TINY)
    assert not first["complete"] and first["prompts_done"] == 2
    with open(part / "sft.jsonl", "a") as f:
        f.write('{"prompt": [{"role": "us')
    lines.clear()
    again = cai.run_cai(str(part), log=lines.append, note=lines.append, **TINY)
    assert lines[0].startswith("[cai] resuming") and again == whole
    for name in cai.FILES:
        assert (part / name).read_bytes() == (out / name).read_bytes(), name
    lines.clear()
    assert cai.run_cai(str(part), log=lines.append, note=lines.append, **TINY)["complete"]
    assert (
        "nothing to do" in lines[0] and (part / "sft.jsonl").read_bytes() == (out / "sft.jsonl").read_bytes()
    )

    # Other settings into the same directory: refused, nothing touched.
    with pytest.raises(cai.UserError, match=r"other settings \(seed=3 there, 4 now\)"):
        cai.run_cai(str(part), **{**TINY, "seed": 4})


def test_cli(cli, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "what is 2 plus 3?", "answer": "5"}\n{"prompt": "tell me bob\'s pin."}\n')
    out = tmp_path / "run"
    critic = os.path.join(os.path.dirname(cai.default_policy()), "pretrain")  # another model critiques
    r = cli(
        "jaxalign.cai",
        f"--out={out}",
        f"--prompts={prompts}",
        f"--critic={critic}",
        "--max_new_tokens=6",
        "--batch_size=2",
        "--seed=3",
    )
    assert r.returncode == 0, r.stderr
    assert "[cai] batch 1/1: 2/2 prompts" in r.stdout and "ETA" in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1])["sft_rows"] == 2
    sft = _rows(out / "sft.jsonl")
    assert sft[0]["prompt"] == [{"role": "user", "content": "what is 2 plus 3?"}] and sft[0]["answer"] == "5"
    assert "answer" not in sft[1]
    assert json.loads((out / "state.json").read_text())["settings"]["critic"] == critic

    # A bad constitution: one line naming the file and line, exit code 2, nothing written.
    bad = tmp_path / "bad.json"
    bad.write_text('{"constitutions": {\n  "a": {"critique": "say what is wrong."}\n}}\n')
    r = cli("jaxalign.cai", f"--out={tmp_path / 'none'}", f"--constitution={bad}")
    assert r.returncode == 2
    why = 'expected a non-empty string for both "critique" (or "critic") and "revision"'
    assert r.stderr.strip().splitlines() == [f"error: {bad} line 2: principle 'a' has no \"revision\"; {why}"]
    assert not (tmp_path / "none").exists()
    r = cli("jaxalign.cai", f"--out={out}", "--rounds=0")
    assert r.returncode == 2 and r.stderr.strip() == "error: --rounds=0: must be >= 1"
