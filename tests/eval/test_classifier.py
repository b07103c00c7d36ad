"""A `*ForSequenceClassification` directory as a scorer of answers: scores against a direct forward at the
last token (and, through the CLI, equal to `eval.reward_model`'s on the same answers), the two input modes, refusals of multi-label and causal-LM
checkpoints as one line, and the command line."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxalign import defaults as common
from jaxalign import sharding
from jaxalign.data import templates
from jaxalign.errors import CheckpointError
from jaxalign.eval import classifier as clf_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT, REWARD = common.asset("checkpoints", "sft"), common.asset("checkpoints", "reward")
PROMPTS = [[{"role": "user", "content": "what's 8 times 3?"}]] * 2 + ["what is 2 plus 2?"]
ANSWERS = ["8 times 3 is 24.", "8 times 3 is 25.", "4"]


@pytest.fixture(scope="module")
def loaded():
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])  # one device: quick compiles
    with jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else mesh:
        clf = clf_lib.load_classifier(REWARD, mesh)
    return clf, mesh


def test_scores_are_the_last_token_score_of_a_direct_forward(loaded):
    clf, mesh = loaded
    with jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else mesh:
        got = clf_lib.score_answers(
            clf, PROMPTS, ANSWERS, batch_size=4, batch_sharding=sharding.batch_sharding(mesh)
        )
        for p, a, g in zip(PROMPTS, ANSWERS, got):
            ids = np.asarray([clf_lib.encode(clf.tokenizer, p, a)], np.int32)
            assert ids[0, -1] == clf.tokenizer.eos_token_id  # read at the EOS, as trained
            t = ids.shape[1]
            scores = jax.jit(clf.module.apply)(
                {"params": clf.params}, ids, np.arange(t, dtype=np.int32)[None], np.ones((1, t), np.int32)
            )
            np.testing.assert_allclose(g, float(scores[0, -1]), atol=1e-5)
    s = clf_lib.summary(got)
    assert s["classifier/mean"] == pytest.approx(float(np.mean(got)))
    assert 0 < s["classifier/sigmoid_mean"] < 1


def test_input_modes(loaded):
    tok = loaded[0].tokenizer
    assert clf_lib.encode(tok, PROMPTS[0], "x", "answer") == templates.encode_text(tok, "x")[0].tolist()
    assert clf_lib.encode(tok, "q", "a") == tok("q")["input_ids"] + tok("a", add_special_tokens=False)[
        "input_ids"
    ] + [tok.eos_token_id]
    with pytest.raises(ValueError, match="mode"):
        clf_lib.encode(tok, "q", "a", "both")


def _classifier_dir(tmp_path, **changes):
    d = tmp_path / "clf"
    d.mkdir()
    for name in os.listdir(REWARD):
        if name != "config.json":
            shutil.copy(os.path.join(REWARD, name), d / name)
    with open(os.path.join(REWARD, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(changes)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def test_refuses_multi_label_and_causal_lm_checkpoints(tmp_path):
    assert clf_lib.check_classifier(REWARD) == {"num_labels": 1, "label": "LABEL_0"}
    toxic = _classifier_dir(tmp_path, num_labels=2, id2label={"0": "non-toxic", "1": "toxic"}, label2id=None)
    with pytest.raises(
        CheckpointError, match=rf"^{toxic}/config.json: num_labels=2 \(labels 0=non-toxic, 1=toxic\)"
    ):
        clf_lib.check_classifier(toxic)
    with pytest.raises(CheckpointError, match=rf"^{SFT}/config.json: architectures=\['LlamaForCausalLM'\]"):
        clf_lib.check_classifier(SFT)
    assert clf_lib.num_labels_of({}) == 2 and clf_lib.num_labels_of({"id2label": {"0": "a"}}) == 1


def _cli(cli, workdir, *overrides):
    return cli(
        "jaxalign.main",
        f"--config={os.path.join(ROOT, 'configs', 'eval.py')}",
        f"--workdir={workdir}",
        "--config.eval.reference=",
        "--config.eval.text_path=",
        "--config.eval.plots=False",
        *overrides,
    )


def test_cli_scores_the_answers_and_refuses_bad_classifiers_in_one_line(cli, tmp_path):
    toxic = _classifier_dir(tmp_path, num_labels=3, id2label=None, label2id=None)
    r = _cli(cli, tmp_path / "ev", f"--config.eval.classifier={toxic}")
    assert r.returncode == 2
    assert r.stderr.startswith(
        f"error: {toxic}/config.json: num_labels=3 (labels none named); only single-logit"
    )
    assert r.stderr.count("\n") == 1
    r = _cli(cli, tmp_path / "ev", f"--config.eval.classifier={REWARD}", "--config.eval.classifier_input=x")
    assert r.returncode == 2 and "config.eval.classifier_input='x': expected one of" in r.stderr
    wd = tmp_path / "ok"
    r = _cli(
        cli,
        wd,
        f"--config.eval.classifier={REWARD}",
        f"--config.eval.prompts={common.asset('prompts_test.jsonl')}",
        "--config.eval.max_prompts=8",
        "--config.eval.max_new_tokens=8",
        "--config.eval.batch_size=8",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| classifier/mean |" in r.stdout
    res = json.loads((wd / "eval.json").read_text())
    m = res["sets"]["prompts_test"]
    # The same reward model through the policy's token ids and through decoded text: the same numbers.
    assert m["classifier/mean"] == pytest.approx(m["reward/mean"], abs=1e-4)
    recs = [json.loads(line) for line in (wd / "completions.jsonl").read_text().splitlines()]
    assert len(recs) == 8 and all(abs(x["classifier"] - x["reward"]) < 1e-4 for x in recs)
