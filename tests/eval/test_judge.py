"""The LLM judge (`eval.judge`): the two-order averaging on a stub logit function, identical answers give
exactly ½ through the real (embedded SFT) judge, its two verdict logits equal the full forward's, the
question is left-truncated to fit, the command line records the metrics, and a bad judge is one line.
The embedded checkpoint is a tiny model: the numbers are meaningless, the tests check mechanics."""

import json
import os

import jax
import numpy as np
import pytest

from jaxalign import defaults as common
from jaxalign.errors import ConfigError
from jaxalign.eval import judge as judge_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT, REWARD = common.asset("checkpoints", "sft"), common.asset("checkpoints", "reward")
SHORT = "Q: {question}\n1: {answer_1}\n2: {answer_2}\nBetter? 1 or 2."  # the tiny judge's window is 128


def _sig(x):
    return 1 / (1 + np.exp(-x))


@pytest.fixture(scope="module")
def judge():
    return judge_lib.load_judge(SFT)


def test_both_orders_are_averaged(judge, stub_judge):
    tok, q = judge.tokenizer, {"good": 2.0, "bad": 0.0, "same": 1.0}
    args = (None, None, tok, ["q?"] * 3, ["good", "bad", "same"], ["bad", "good", "same"])
    v = judge_lib.judge_pairs(*args, template=SHORT, logits_fn=stub_judge(tok, q, bias=1.0))
    # good vs bad: sigmoid(2 + 1 - 0) with good first, 1 - sigmoid(0 + 1 - 2) with bad first.
    np.testing.assert_allclose(v["p_ab"], [_sig(3), _sig(-1), _sig(1)])
    np.testing.assert_allclose(v["p_ba"], [1 - _sig(-1), 1 - _sig(3), 1 - _sig(1)])
    np.testing.assert_allclose(v["p"], (v["p_ab"] + v["p_ba"]) / 2)
    assert v["p"][2] == 0.5 and v["p"][0] + v["p"][1] == pytest.approx(1)
    s = judge_lib.summary(v)
    assert s["judge/win_rate"] == pytest.approx(0.5) and s["judge/win_rate_hard"] == 0.5
    assert s["judge/position_consistency"] == pytest.approx(2 / 3)  # "same" picks Answer 1 both times
    assert s["judge/first_position_bias"] == pytest.approx(np.mean([_sig(3), _sig(-1), _sig(1)] * 2))
    # Without a position bias, swapping the answers gives 1 - p.
    no_bias = stub_judge(tok, q, bias=0.0)
    p = judge_lib.pairwise_preferences(*args, template=SHORT, logits_fn=no_bias)
    swapped = judge_lib.pairwise_preferences(
        *args[:3], args[3], args[5], args[4], template=SHORT, logits_fn=no_bias
    )
    np.testing.assert_allclose(p, 1 - swapped)
    np.testing.assert_allclose(p, [_sig(2), _sig(-2), 0.5])


def test_real_judge_identical_answers_are_exactly_one_half(judge):
    prompts = ["what is 2 plus 2?", [{"role": "user", "content": "what's 8 times 3?"}], "hi"]
    answers = ["2 plus 2 is 4.", "8 times 3 is 24.", "hello", "8 times 3 is 24."]
    others = answers[:3] + ["8 times 3 is 11."]
    v = judge_lib.judge_pairs(
        judge.module, judge.params, judge.tokenizer, prompts + prompts[1:2], answers, others, template=SHORT
    )
    assert list(v["p"][:3]) == [0.5, 0.5, 0.5] and v["p"][3] != 0.5
    assert v["p"][3] == pytest.approx((v["p_ab"][3] + v["p_ba"][3]) / 2)
    assert np.all(v["p_ab"] != 0.5)  # the tiny judge has a position bias; the averaging cancels it
    # Its two verdict logits are the full forward's at the last token.
    ids, cut = judge_lib.encode_judgement(judge.tokenizer, "q?", "4", "5", SHORT, 128)
    assert not cut and judge.token_ids == (21, 22) and judge.token_note == "single tokens"
    t = len(ids)
    full = jax.jit(judge.module.apply)(
        {"params": judge.params},
        np.asarray([ids], np.int32),
        np.arange(t, dtype=np.int32)[None],
        np.ones((1, t), np.int32),
    )
    got = judge_lib.verdict_logits(judge.fn, judge.params, [ids], 2)
    np.testing.assert_allclose(got[0], np.asarray(full[0, -1, [21, 22]]), atol=1e-4)


def test_long_questions_lose_their_start_and_bad_templates_are_refused(judge):
    tok = judge.tokenizer
    q = " ".join(f"what is {i} plus 2?" for i in range(30)) + " the end?"
    ids, cut = judge_lib.encode_judgement(tok, q, "4", "5", SHORT, 64)
    text = tok.decode(ids)
    assert cut and len(ids) <= 64 and "the end?\n1: 4\n2: 5\nBetter" in text and "what is 0 plus" not in text
    with pytest.raises(ConfigError, match="the template alone is"):
        judge_lib.encode_judgement(tok, "q", "a", "b", judge_lib.DEFAULT_TEMPLATE, 128)
    with pytest.raises(ConfigError, match=r"config\.eval\.judge_template=.*lacks \{answer_2\}"):
        judge_lib.check_template("{question} {answer_1}")
    judge_lib.check_template(judge_lib.DEFAULT_TEMPLATE)


def _cli(cli, workdir, *overrides):
    return cli(
        "jaxalign.main",
        f"--config={os.path.join(ROOT, 'configs', 'eval.py')}",
        f"--workdir={workdir}",
        f"--config.eval.prompts={common.asset('prompts_test.jsonl')}",
        "--config.eval.text_path=",
        "--config.eval.plots=False",
        "--config.eval.max_prompts=8",
        "--config.eval.max_new_tokens=12",
        "--config.eval.batch_size=8",
        f"--config.eval.judge_template={SHORT}",
        *overrides,
    )


def test_cli_records_the_judge_and_refuses_a_bad_judge_in_one_line(cli, tmp_path):
    wd = tmp_path / "ok"
    # The default reference is the policy itself (greedy: the same answers), so the judge's win rate is
    # exactly 1/2 whatever its position bias; no reward model (the judge needs none).
    r = _cli(cli, wd, f"--config.eval.judge={SFT}", "--config.eval.reward_model=")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("| win_rate |"))
    assert [line.split(" |")[0] for line in lines[i + 1 : i + 5]] == [f"| {m}" for m in judge_lib.METRICS]
    res = json.loads((wd / "eval.json").read_text())
    m = res["sets"]["prompts_test"]
    assert m["judge/win_rate"] == m["judge/win_rate_hard"] == 0.5 and m["win_rate"] is None
    assert 0 <= m["judge/position_consistency"] <= 1 and 0 <= m["judge/first_position_bias"] <= 1
    assert res["judge"] == SFT
    assert res["judge_truncated"] == {"prompts_test": 0}
    recs = [json.loads(line) for line in (wd / "completions.jsonl").read_text().splitlines()]
    assert len(recs) == 8 and all(x["judge"]["p_policy_better"] == 0.5 for x in recs)
    assert recs[0]["reference_completion"] == recs[0]["completion"]
    assert "## LLM judge" in (wd / "eval.md").read_text()

    for bad, why in (
        (str(tmp_path / "nowhere"), "config.eval.judge="),
        (REWARD, "is a classifier; the judge must be a chat"),
    ):
        r = _cli(cli, tmp_path / "bad", f"--config.eval.judge={bad}")
        assert r.returncode == 2 and why in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "bad").exists()
