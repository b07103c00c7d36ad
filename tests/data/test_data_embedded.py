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
    assert max(manifest["max_tokens"].values()) <= embedded.MAX_TOKENS
    total = sum(f.stat().st_size for f in embedded.EMBEDDED_DIR.rglob("*") if f.is_file())
    assert total < 6 * 2**20   # data + tokenizer + three 0.5 MB checkpoints


def test_tokenizer_loads_offline_with_template():
    tok = embedded.load_tokenizer()
    assert tok.chat_template and "{% generation %}" in tok.chat_template
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == (PAD, "<|bos|>", EOS)
    text = tok.apply_chat_template([{"role": "user", "content": "what is 3 plus 5?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|bos|><|user|>what is 3 plus 5?<|assistant|>"


def test_sft_train_is_noisy_and_test_clean():
    def wrong_fraction(split):
        rows = [json.loads(line) for line in open(embedded.embedded_path("sft", split))]
        answers = [(u["content"], a["content"]) for r in rows
                   for u, a in zip(r["messages"][::2], r["messages"][1::2])]
        wrong = 0
        for q, a in answers:
            x, op, y = [t for t in q.replace("?", " ").replace(".", " ").split() if t.isdigit() or t in
                        embedded.OPS][:3]
            wrong += not check_answer(str(embedded.OPS[op](int(x), int(y))), a)
        return wrong / len(answers)

    assert 0.25 < wrong_fraction("train") < 0.45
    assert wrong_fraction("test") == 0


@pytest.mark.parametrize("completion, correct, r", [
    ("3 plus 5 is 8." + EOS, True, 1.0),
    ("3 plus 5 is 8." + EOS + PAD + PAD, True, 1.0),
    ("8." + EOS, True, 1.0),
    ("3 plus 5 is 8.", True, 0.5),                    # truncated: never stopped
    ("3 plus 5 is 8. I like numbers." + EOS, True, 0.5),  # rambles on
    ("3 plus 5 is 9." + EOS, False, 0.0),
    ("3 plus 5 is 18." + EOS, False, 0.0),
    ("3 plus 5 is 8." + USER + "what is 2 plus 2?" + EOS, True, -0.5),  # speaks as the user
    ("3 plus 5 is 8.\nUser: what is 2 plus 2?", True, -0.5),
    ("3 plus 5 is 9." + USER + "hi", False, -1.0),
    ("sorry, I can't help with that." + EOS, False, 0.0),  # over-refusal of a benign request
    ("", False, 0.0),
])
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
