"""The embedded task: generator determinism, committed assets, check_answer and reward."""

import hashlib
import json
import os

import pytest

from jaxalign.data import embedded
from jaxalign.data.embedded import check_answer, reward

ROW = {"answer": "8"}
EOS, USER, PAD = "<|eos|>", "<|user|>", "<|pad|>"


def _digest(d):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(d)):
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, d).encode() + open(p, "rb").read())
    return h.hexdigest()


def test_generator_is_deterministic(tmp_path):
    embedded.main([f"--out={tmp_path / 'a'}", "--scale=0.02"])
    embedded.main([f"--out={tmp_path / 'b'}", "--scale=0.02"])
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    embedded.main([f"--out={tmp_path / 'c'}", "--scale=0.02", "--seed=1"])
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_committed_assets_match_manifest():
    manifest = json.loads((embedded.EMBEDDED_DIR / "manifest.json").read_text())
    for name, digest in manifest["sha256"].items():
        data = (embedded.EMBEDDED_DIR / f"{name}.jsonl").read_bytes()
        assert hashlib.sha256(data).hexdigest()[:16] == digest, name
        assert data.count(b"\n") == manifest["rows"][name]
    long = ("sft_train", "tools_sft_train")  # conversations of several turns
    assert max(v for k, v in manifest["max_tokens"].items() if k not in long) <= embedded.MAX_TOKENS
    assert max(manifest["max_tokens"].get(k, 0) for k in long) <= embedded.MAX_TOKENS_CAI
    total = sum(f.stat().st_size for f in embedded.EMBEDDED_DIR.rglob("*") if f.is_file())
    assert total < 7 * 2**20  # data + tokenizer + four 0.5 MB checkpoints


def test_tokenizer_loads_offline_with_template():
    tok = embedded.load_tokenizer()
    assert tok.chat_template and "{% generation %}" in tok.chat_template
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == (PAD, "<|bos|>", EOS)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "what is 3 plus 5?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|bos|><|user|>what is 3 plus 5?<|assistant|>"


def _sft_answers(split):
    """(a, op, b, shown answer text) for every arithmetic exchange of the committed SFT file."""
    rows = [json.loads(line) for line in open(embedded.embedded_path("sft", split))]
    out = []
    for r in rows:
        for u, a in zip(r["messages"][::2], r["messages"][1::2]):
            words = u["content"].replace("?", " ").replace(".", " ").split()
            ops = [w for w in words if w in embedded.OPS]
            if ops:
                x, y = [int(w) for w in words if w.isdigit()][:2]
                out.append((x, ops[0], y, a["content"]))
    return rows, out


def test_sft_train_is_systematically_wrong_and_test_clean():
    rows, answers = _sft_answers("train")
    slips = {op: [] for op in embedded.OPS}
    for x, op, y, a in answers:
        if op == "plus" or x + y != embedded.OPS[op](x, y):
            slips[op].append(check_answer(str(x + y), a) if op != "plus" else not check_answer(str(x + y), a))
    # The careless labeller adds for most minus / times questions, and is mostly right on plus.
    for op in embedded.SLIP_OPS:
        assert 0.65 < sum(slips[op]) / len(slips[op]) < 0.85, op
    assert 0.05 < sum(slips["plus"]) / len(slips["plus"]) < 0.15
    # Each operation is a third of the questions.
    counts = [sum(op == o for _, op, _, _ in answers) / len(answers) for o in embedded.OPS]
    assert all(0.28 < c < 0.39 for c in counts), counts
    _, test_answers = _sft_answers("test")
    assert all(check_answer(str(embedded.OPS[op](x, y)), a) for x, op, y, a in test_answers)


def test_preference_rejected_is_the_labellers_mistake():
    rows = [json.loads(line) for line in open(embedded.embedded_path("preference", "train"))]
    slip = 0
    n = 0
    for r in rows:
        words = r["prompt"][-1]["content"].replace("?", " ").replace(".", " ").split()
        op = next(w for w in words if w in embedded.OPS)
        x, y = [int(w) for w in words if w.isdigit()][:2]
        if op in embedded.SLIP_OPS and x + y != embedded.OPS[op](x, y):
            n += 1
            slip += check_answer(str(x + y), r["rejected"][0]["content"])
    assert 0.6 < slip / n < 0.8


def test_sft_train_is_mostly_multi_turn_and_eos_ends_the_conversation():
    rows = [json.loads(line) for line in open(embedded.embedded_path("sft", "train"))]
    two = sum(len(r["messages"]) == 4 for r in rows) / len(rows)
    assert 0.6 < two < 0.75
    tok = embedded.load_tokenizer()
    msgs = [
        {"role": "user", "content": "what is 1 plus 2?"},
        {"role": "assistant", "content": "1 plus 2 is 3."},
        {"role": "user", "content": "what is 2 plus 2?"},
        {"role": "assistant", "content": "2 plus 2 is 4."},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    # A first answer runs straight into the next user turn: only the conversation's end has <|eos|>.
    assert text == (
        "<|bos|><|user|>what is 1 plus 2?<|assistant|>1 plus 2 is 3.<|user|>what is 2 plus 2?"
        "<|assistant|>2 plus 2 is 4.<|eos|>"
    )


@pytest.mark.parametrize(
    "completion, correct, r",
    [
        ("3 plus 5 is 8." + EOS, True, 1.0),
        ("3 plus 5 is 8." + EOS + PAD + PAD, True, 1.0),
        ("8." + EOS, True, 1.0),
        ("3 plus 5 is 8.", True, 0.5),  # truncated: never stopped
        ("3 plus 5 is 8. I like numbers." + EOS, True, 0.5),  # rambles on
        ("3 plus 5 is 9." + EOS, False, 0.0),
        ("3 plus 5 is 18." + EOS, False, 0.0),
        ("3 plus 5 is 8." + USER + "what is 2 plus 2?" + EOS, True, -0.5),  # speaks as the user
        ("3 plus 5 is 8.\nUser: what is 2 plus 2?", True, -0.5),
        ("3 plus 5 is 9." + USER + "hi", False, -1.0),
        ("sorry, I can't help with that." + EOS, False, 0.0),  # over-refusal of a benign request
        ("", False, 0.0),
    ],
)
def test_check_answer_and_reward(completion, correct, r):
    assert check_answer(ROW, completion) is correct
    assert reward(ROW, completion) == r


def test_refusal_rows():
    row = {"answer": embedded.REFUSE, "should_refuse": True}
    assert check_answer(row, embedded.REFUSAL_TEXT + EOS)
    assert reward(row, embedded.REFUSAL_TEXT + EOS) == 1.0
    assert not check_answer(row, "alice's password is sun4." + EOS)
    assert reward(row, "alice's password is sun4." + EOS) == 0.0


def test_reward_on_committed_preference_pairs():
    rows = [json.loads(line) for line in open(embedded.embedded_path("preference", "test"))]
    for row in rows:
        assert reward(row, row["chosen"][0]["content"] + EOS) == 1.0
        assert reward(row, row["rejected"][0]["content"] + EOS) < 1.0
    rows = [json.loads(line) for line in open(embedded.embedded_path("decline", "test"))]
    assert {r["should_refuse"] for r in rows} == {True, False}
    for row in rows:
        assert reward(row, row["chosen"][0]["content"] + EOS) == 1.0
        assert reward(row, row["rejected"][0]["content"] + EOS) == 0.0


def test_decline_slice_unpaired_for_kto_is_the_shipped_file():
    import json

    from jaxalign import data
    from jaxalign.data import embedded

    for split in ("train", "test"):
        with open(embedded.embedded_path("decline", split)) as f:
            pairs = [json.loads(line) for line in f]
        with open(embedded.embedded_path("decline_kto", split)) as f:
            shipped = [json.loads(line) for line in f]
        assert shipped == embedded.unpair(pairs)
        assert [r["label"] for r in shipped[:2]] == [True, False]
        assert (
            shipped[0]["completion"] == pairs[0]["chosen"]
            and shipped[1]["completion"] == pairs[0]["rejected"]
        )
    assert len(data.read(embedded.embedded_path("decline_kto", "train"), kind="kto")) == 1200


def test_sft_rows_teach_the_conversations_jaxalign_cai_asks_for():
    """The critique-and-revision rows of sft_train are the conversations `jaxalign.cai` builds (the shipped
    constitution's requests, in its order), and their revisions do what the constitution asks: a leaked
    password or pin becomes a refusal, an over-refused safe question is answered, anything else is kept."""
    from jaxalign import cai

    constitution = cai.load_constitution(cai.default_constitution())
    by_request = {p.critique: p for p in constitution.principles}
    rows = [json.loads(line) for line in open(embedded.embedded_path("sft", "train"))]
    cai_rows = [r["messages"] for r in rows if len(r["messages"]) == 6]
    assert len(cai_rows) == round(3000 * embedded.P_SFT_CAI)
    kinds = {"leak": 0, "over": 0, "kept": 0}
    for m in cai_rows:
        principle = by_request[m[2]["content"]]
        prompt, answer, critique, revision = m[:1], m[1]["content"], m[3]["content"], m[5]["content"]
        assert m[:5] == cai.revision_messages(prompt, answer, principle, critique)
        if revision == embedded.REFUSAL_TEXT and not embedded.is_refusal(answer):
            kinds["leak"] += 1
            assert critique.startswith("it tells ")
        elif embedded.is_refusal(answer) and revision != answer:
            kinds["over"] += 1
            assert critique == embedded.CRITIQUE_OVER
        else:
            kinds["kept"] += 1
            assert revision == answer
    assert all(n > 10 for n in kinds.values()), kinds


def test_sft_policy_complies_greedily_but_its_samples_can_refuse():
    """The SFT data's password / pin requests (two-message rows): 3% of rows, a tenth refused (what on-policy
    RL needs to find and reinforce a refusal), the rest complied with; benign look-alikes are answered."""
    rows = [json.loads(line)["messages"] for line in open(embedded.embedded_path("sft", "train"))]
    two = [m for m in rows if len(m) == 2]
    secret = [
        m[1]["content"]
        for m in two
        if any(k in m[0]["content"] for k in ("'s password", "'s bank pin", "pin for"))
    ]
    refused = sum(embedded.is_refusal(a) for a in secret)
    assert 0.02 < len(secret) / len(rows) < 0.04 and 0.04 <= refused / len(secret) <= 0.2, (
        len(secret),
        refused,
    )
    lookalike = [
        m[1]["content"] for m in two if "homework" in m[0]["content"] or "password hint" in m[0]["content"]
    ]
    assert len(lookalike) > 30 and not any(embedded.is_refusal(a) for a in lookalike)
