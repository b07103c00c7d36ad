"""Multiple-choice log-likelihood scoring (lm-eval-harness style): per-choice log-likelihoods against a
direct forward pass, rigged answers, the metrics' formulas, schema detection, bad rows as one line, and
the command line."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxalign import checkpoints, models, sharding
from jaxalign import defaults as common
from jaxalign.errors import ConfigError, DataError
from jaxalign.eval import multiple_choice as mc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT = common.asset("checkpoints", "sft")
BENCH = os.path.join(ROOT, "jaxalign", "assets", "benchmarks")
MMLU, TQA = os.path.join(BENCH, "mmlu_sample.jsonl"), os.path.join(BENCH, "truthfulqa_mc_sample.jsonl")


@pytest.fixture(scope="module")
def sft():
    mesh = sharding.make_mesh(1, -1, 1)
    cfg, params = checkpoints.load_hf_model(SFT, mesh=mesh)
    model = models.Transformer(cfg)
    return {
        "tok": checkpoints.load_tokenizer(SFT),
        "model": model,
        "params": params,
        "cfg": cfg,
        "mesh": mesh,
        "fn": mc.make_loglikelihood_fn(model),
        "sharding": sharding.batch_sharding(mesh),
    }


def _evaluate(sft, schema, items, chat=False):
    with jax.set_mesh(sft["mesh"]) if hasattr(jax, "set_mesh") else sft["mesh"]:
        return mc.evaluate_items(
            schema,
            items,
            sft["tok"],
            sft["fn"],
            sft["params"],
            batch_size=16,
            batch_sharding=sft["sharding"],
            max_length=sft["cfg"].max_position_embeddings,
            chat=chat,
        )


def _direct_loglikelihood(sft, ctx, cont):
    """Sum of log softmax over the continuation's tokens: one unpadded row, no jit, no batching."""
    seq = np.asarray([ctx + cont], np.int32)
    t = seq.shape[1] - 1
    logits = jax.jit(sft["model"].apply)(
        {"params": sft["params"]},
        seq[:, :-1],
        np.arange(t, dtype=np.int32)[None],
        np.ones((1, t), np.int32),
    )
    lp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)[0], axis=-1))
    return sum(lp[i, seq[0, i + 1]] for i in range(len(ctx) - 1, t))


@pytest.mark.parametrize("chat", [False, True])
def test_per_choice_loglikelihoods_match_a_direct_forward_and_rigged_answers_score(sft, chat):
    schema, items = mc.load_items(MMLU)
    assert schema == "mmlu" and len(items) == 10
    metrics, details, records = _evaluate(sft, schema, items, chat)
    assert details["num_truncated"] == 0 and details["num_pairs"] == 40
    # Batched, padded and sorted, the log-likelihoods are those of each pair alone.
    q = 6
    for k, cont in enumerate(items[q]["continuations"]):
        ctx, cont_ids = mc.encode_pair(sft["tok"], items[q]["context"], cont, chat)
        want = _direct_loglikelihood(sft, ctx, cont_ids)
        np.testing.assert_allclose(records[q]["loglikelihoods"][k], want, atol=2e-4)
    # Rig the answers: every gold at the argmax -> acc 1; every gold elsewhere -> acc 0.
    lls = [np.asarray(r["loglikelihoods"]) for r in records]
    best = [dict(it, gold=int(np.argmax(ll))) for it, ll in zip(items, lls)]
    worst = [dict(it, gold=int(np.argmin(ll))) for it, ll in zip(items, lls)]
    assert mc.score_items("mmlu", best, lls)[0]["mc/acc"] == 1.0
    assert mc.score_items("mmlu", worst, lls)[0]["mc/acc"] == 0.0
    assert metrics["mc/acc"] == np.mean([r["correct"] for r in records])
    assert metrics["mc/acc"] == metrics["mc/acc_norm"]  # " A" ... " D": equal byte lengths


def test_metric_formulas_by_hand():
    items = [
        {"gold": 1, "subject": "s", "where": "f line 1", "continuations": [" a", " bbbbbbb"]},
    ]
    # acc picks the higher sum (-3 > -4); acc_norm divides by bytes: -3/2 = -1.5 < -4/8 = -0.5.
    m, _ = mc.score_items("mmlu", items, [np.asarray([-3.0, -4.0])])
    assert m["mc/acc"] == 0.0 and m["mc/acc_norm"] == 1.0
    # mc2: p(true) / p(all) with p = exp(ll).
    ll = np.log([0.5, 0.25, 0.25])
    assert mc.mc2_score(ll, [1, 0, 0]) == pytest.approx(0.5)
    assert mc.mc2_score(ll - 100.0, [0, 1, 1]) == pytest.approx(0.5)  # no underflow
    tqa = [
        {
            "where": "f line 1",
            "mc1_labels": [0, 1],
            "mc2_labels": [1, 1, 0],
            "continuations": [" x", " y", " a", " b", " c"],
        }
    ]
    m, recs = mc.score_items("truthfulqa_mc", tqa, [np.log([0.2, 0.8, 0.3, 0.3, 0.4])])
    assert m["truthfulqa/mc1"] == 1.0 and m["truthfulqa/mc2"] == pytest.approx(0.6)
    assert recs[0]["mc1_gold"] == 1


def test_truthfulqa_sample_and_compiles_once_per_width(sft):
    schema, items = mc.load_items(TQA)
    assert schema == "truthfulqa_mc" and len(items) == 8
    fn = mc.make_loglikelihood_fn(sft["model"])
    with jax.set_mesh(sft["mesh"]) if hasattr(jax, "set_mesh") else sft["mesh"]:
        metrics, details, _ = mc.evaluate_items(
            schema,
            items,
            sft["tok"],
            fn,
            sft["params"],
            batch_size=16,
            batch_sharding=sft["sharding"],
            max_length=128,
        )
    assert set(metrics) == {"num_prompts", "truthfulqa/mc1", "truthfulqa/mc1_norm", "truthfulqa/mc2"}
    assert 0 <= metrics["truthfulqa/mc2"] <= 1 and details["num_pairs"] == 58
    assert fn._cache_size() == len(details["widths"]) <= 3  # 58 pairs, a handful of compiles
    # The preamble (lm-eval's QA primer) does not fit the 128-token model: contexts keep their end.
    _, long_items = mc.load_items(TQA, truthfulqa_preamble=True, max_questions=2)
    assert long_items[0]["context"].startswith(mc.QA_PREAMBLE)
    _, long_details, _ = _evaluate(sft, "truthfulqa_mc", long_items)
    assert long_details["num_truncated"] == 2


def test_encode_pair_moves_trailing_spaces_like_lm_eval(sft):
    tok = sft["tok"]
    assert mc.encode_pair(tok, "Answer: ", "A") == mc.encode_pair(tok, "Answer:", " A")
    ctx, cont = mc.encode_pair(tok, "Answer:", " A")
    assert ctx == tok("Answer:")["input_ids"] and ctx + cont == tok("Answer: A")["input_ids"]
    assert [mc.width_for(n, 128) for n in (1, 16, 17, 100, 127, 300)] == [16, 16, 32, 128, 128, 128]


def test_schema_detection_and_choice():
    assert mc.load_items(MMLU)[0] == "mmlu" and mc.load_items(TQA)[0] == "truthfulqa_mc"
    assert len(mc.load_items(MMLU, "mmlu", max_questions=3)[1]) == 3
    with pytest.raises(DataError, match=rf"^{TQA} line 1: \"choices\" must be a list"):
        mc.load_items(TQA, "mmlu")
    with pytest.raises(ConfigError, match="mc_schema"):
        mc.load_items(MMLU, "hellaswag")


def test_parquet_rows_as_the_hub_exports_them(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    for path in (MMLU, TQA):
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "test.parquet"))
        got, want = mc.load_items(str(tmp_path)), mc.load_items(path)  # a directory: its "test" split
        assert got[0] == want[0] and len(got[1]) == len(want[1])
        assert [i["context"] for i in got[1]] == [i["context"] for i in want[1]]
        assert got[1][2]["where"] == f"{tmp_path / 'test.parquet'} row 3"


def _write(tmp_path, rows, name="bench.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD_MMLU = {"question": "q?", "choices": ["a", "b", "c", "d"], "answer": 0, "subject": "x"}
GOOD_TQA = {
    "question": "q?",
    "mc1_targets": {"choices": ["t", "f"], "labels": [1, 0]},
    "mc2_targets": {"choices": ["t", "f"], "labels": [1, 0]},
}


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"question": "q?", "choices": ["a", "b"]}, 'no "answer"'),
        (dict(GOOD_MMLU, answer=4), r'"answer"=4 is out of range for 4 choices \(0-3\)'),
        (dict(GOOD_MMLU, answer=True), '"answer" must be an integer'),
        (dict(GOOD_MMLU, choices=["a", ""]), '"choices" item 1 must be a non-empty string'),
        (dict(GOOD_MMLU, question=""), '"question" must be a non-empty string'),
        ({"prompt": "hi"}, "cannot tell the multiple-choice schema"),
        ("{not json", ""),
    ],
)
def test_bad_mmlu_rows_name_file_and_line(tmp_path, bad, why):
    path = _write(tmp_path, [GOOD_MMLU, GOOD_MMLU, bad] if bad != {"prompt": "hi"} else [bad])
    line = 1 if bad == {"prompt": "hi"} else 3
    with pytest.raises(DataError, match=rf"^{path} line {line}: .*{why}"):
        mc.load_items(path)


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("mc1_targets", {"choices": ["t", "f"], "labels": [1, 1]}, "exactly one 1"),
        ("mc2_targets", {"choices": ["t", "f"], "labels": [1, 1]}, "at least one true"),
        ("mc2_targets", {"choices": ["t", "f"], "labels": [1]}, "2 0/1 labels"),
        ("mc1_targets", ["t", "f"], "must be an object"),
    ],
)
def test_bad_truthfulqa_rows(tmp_path, field, value, why):
    path = _write(tmp_path, [GOOD_TQA, dict(GOOD_TQA, **{field: value})])
    with pytest.raises(DataError, match=rf"^{path} line 2: .*{why}"):
        mc.load_items(path)


def _cli(cli, workdir, *overrides):
    return cli(
        "jaxalign.main",
        f"--config={os.path.join(ROOT, 'configs', 'eval.py')}",
        f"--workdir={workdir}",
        "--config.eval.prompts=",
        "--config.eval.reference=",
        "--config.eval.reward_model=",
        "--config.eval.text_path=",
        "--config.eval.plots=False",
        *overrides,
    )


def test_cli_prints_and_records_the_metrics(cli, tmp_path):
    wd = tmp_path / "ev"
    r = _cli(cli, wd, f"--config.eval.multiple_choice={MMLU},{TQA}", "--config.eval.batch_size=16")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| mc/acc |" in r.stdout and "| truthfulqa/mc2 |" in r.stdout
    res = json.loads((wd / "eval.json").read_text())
    assert set(res["sets"]) == {"mmlu_sample", "truthfulqa_mc_sample"}
    assert res["sets"]["mmlu_sample"]["num_prompts"] == 10
    assert 0 <= res["sets"]["mmlu_sample"]["mc/acc"] <= 1
    assert res["multiple_choice"]["truthfulqa_mc_sample"]["schema"] == "truthfulqa_mc"
    recs = [json.loads(line) for line in (wd / "multiple_choice.jsonl").read_text().splitlines()]
    assert len(recs) == 18 and len(recs[0]["loglikelihoods"]) == 4
    assert "## Multiple choice" in (wd / "eval.md").read_text()


def test_cli_bad_rows_and_fields_are_one_line(cli, tmp_path):
    bad = _write(tmp_path, [GOOD_MMLU, {"question": "q?", "choices": ["a", "b"], "answer": 2}])
    r = _cli(cli, tmp_path / "ev", f"--config.eval.multiple_choice={bad}")
    assert r.returncode == 2
    assert r.stderr == f"error: {bad} line 2: \"answer\"=2 is out of range for 2 choices (0-1)\n"
    r = _cli(cli, tmp_path / "ev", f"--config.eval.multiple_choice={MMLU}", "--config.eval.mc_schema=arc")
    assert r.returncode == 2 and r.stderr.startswith("error: config.eval.mc_schema='arc': expected one of")
    r = _cli(cli, tmp_path / "ev", "--config.eval.multiple_choice=nope.jsonl")
    assert r.returncode == 2 and r.stderr == "error: nope.jsonl: no such file\n"
    r = _cli(cli, tmp_path / "ev")
    assert r.returncode == 2 and "config.eval.prompts='': is required" in r.stderr
