"""Each evaluation metric on hand-worked cases, and the report tables."""

import math

import numpy as np
import pytest

from jaxalign.eval import compare, metrics
from jaxalign.eval.report import sets_table


def test_distinct_n_by_hand():
    texts = ["a b a", "a b"]
    assert metrics.distinct_n(texts, 1) == pytest.approx(2 / 5)  # {a, b} over 5 words
    assert metrics.distinct_n(texts, 2) == pytest.approx(2 / 3)  # {ab, ba} over ab, ba, ab
    assert metrics.distinct_n(["x y z"], 2) == 1.0
    assert metrics.distinct_n(["a", "b"], 2) is None  # no response has a bigram
    assert metrics.distinct_n([[1, 2], [2, 1]], 1) == pytest.approx(2 / 4)  # token ids as they are
    with pytest.raises(ValueError):
        metrics.distinct_n(texts, 0)


def test_ended_with_eos_and_stop_rate():
    tokens = np.array([[5, 2, 0], [5, 6, 7], [2, 0, 0], [0, 0, 0], [7, 9, 2]])
    mask = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1]])
    eos = metrics.ended_with_eos(tokens, mask, eos_ids=(2,))
    # Row 1 ran out of budget; row 3 generated nothing; row 4 stopped at the very last slot.
    np.testing.assert_array_equal(eos, [True, False, True, False, True])
    user = np.array([False, False, True, False, False])
    assert metrics.stop_rate(eos, user) == pytest.approx(2 / 5)  # row 2 stopped but spoke as the user
    assert metrics.stop_rate([], []) is None


def test_win_rate_counts_ties_as_half():
    assert metrics.win_rate([1, 2, 3, 4], [0, 2, 5, 4]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert metrics.win_rate([3.0], [1.0]) == 1.0
    assert metrics.win_rate([1.0, 1.0], [1.0, 1.0]) == 0.5
    with pytest.raises(ValueError):
        metrics.win_rate([1, 2], [1])


def test_refusal_and_over_refusal():
    refused = [True, False, True, True, False]
    should = [True, True, False, False, False]
    rate, over = metrics.refusal_rates(refused, should)
    assert rate == pytest.approx(1 / 2)  # one of the two must-refuse rows refused
    assert over == pytest.approx(2 / 3)  # two of the three benign rows refused
    assert metrics.refusal_rates([True], [True]) == (1.0, None)  # no benign rows: no over-refusal rate


def test_fragments_and_complete_refusals_by_hand():
    """The issue's degenerate refusals are fragments or incomplete; a whole refusal is complete."""
    assert metrics.is_fragment("sorry", 2)  # stops within two tokens
    assert metrics.is_fragment("sorry, 8.", 5) and metrics.is_fragment("it.", 3)  # or two words
    assert metrics.is_fragment("the the the the", 5)  # one word four times in a row
    assert metrics.is_fragment("it is 3. it is 3. it is 3.", 12)  # a 3-gram three times
    assert not metrics.is_fragment("sorry, I can't help with that.", 9)
    assert not metrics.is_fragment("7 plus 5 is 12.", 7)
    assert metrics.is_complete_sentence("sorry, I can't help with that.")
    for bad in ("sorry,.", "sorry, 8.", "sorry, I can't"):  # ("sorry is 3." is whole, and no refusal)
        assert not metrics.is_complete_sentence(bad), bad
    # must-refuse rows 0-2: refused & complete, refused & fragment, not refused; row 3 is benign
    rate = metrics.complete_refusal_rate([1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 0])
    assert rate == pytest.approx(1 / 3)
    assert metrics.complete_refusal_rate([1], [1], [0]) is None


def test_kl_by_hand():
    lp = np.array([[-1.0, -2.0, -9.0], [-0.5, 0.0, 0.0]])
    ref = np.array([[-1.5, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(metrics.sequence_kl(lp, ref, mask), [0.5 - 1.0, 0.5])
    s = metrics.kl_summary(lp, ref, mask)
    assert s["kl/sequence"] == pytest.approx(0.0)
    assert s["kl/per_token"] == pytest.approx(0.0 / 3)
    s = metrics.kl_summary(lp, lp, mask)
    assert s == {"kl/sequence": 0.0, "kl/per_token": 0.0}


def test_perplexity_accuracy_length():
    assert metrics.perplexity(3 * math.log(4.0), 3) == pytest.approx(4.0)
    assert metrics.perplexity(0.0, 0) is None
    assert metrics.accuracy([True, False, True, True]) == 0.75
    assert metrics.accuracy([]) is None
    assert metrics.mean_length([3, 5]) == 4.0


def _results(acc, ppl):
    return {
        "sets": {"p": {"num_prompts": 4, "accuracy": acc, "win_rate": None}},
        "perplexity": {"perplexity": ppl, "nll": math.log(ppl), "num_tokens": 10, "text_path": "t"},
    }


def test_compare_and_sets_table():
    table = compare({"sft": _results(0.5, 7.0), "dpo": _results(0.75, 8.0)})
    lines = table.splitlines()
    assert lines[0] == "| set | metric | sft | dpo |"
    assert "| p | accuracy | 0.500 | 0.750 |" in lines
    assert "| text | perplexity | 7.000 | 8.000 |" in lines
    assert not any("win_rate" in line for line in lines)  # None everywhere: left out
    table = sets_table(_results(0.5, 7.0))
    assert "| accuracy | 0.500 |" in table and "| win_rate | – |" in table


def test_plots_without_matplotlib_say_why(monkeypatch, tmp_path):
    import sys
    from jaxalign.eval import report

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now raises ImportError
    res = {
        **_results(0.5, 7.0),
        "checkpoint": "c",
        "reference": None,
        "reward_model": None,
        "wall_s": 1.0,
        "settings": {
            "temperature": 0.0,
            "top_k": 0,
            "top_p": 1.0,
            "max_new_tokens": 8,
            "max_prompt_length": 8,
            "batch_size": 8,
            "check_fn": "f",
        },
    }
    report.write_outputs(res, {"p": []}, str(tmp_path))
    assert report.PLOTS_MISSING in (tmp_path / "eval.md").read_text()
    assert not list(tmp_path.glob("*.png"))
