"""Issue 26's classes of bad input, through the command line: one ``error:`` line, exit code 2, nothing
written; or the right behaviour where the input is legal (hidden folders skipped, a small held-out set
evaluated)."""

import json
import os
import shutil

import pytest

from tests.data.test_bad_data_cli import MSGS, ROOT, check_one_line_error, jsonl, run_cli

EMBEDDED = os.path.join(ROOT, "jaxalign", "assets", "embedded")


def test_workdir_that_is_a_file(tmp_path, cli):
    f = tmp_path / "run"
    f.write_text("not a directory")
    r = run_cli("sft.py", str(f), cli=cli)
    assert (
        r.returncode == 2
        and r.stderr == f"error: --workdir={f}: is a file; expected a directory (or a new path)\n"
    )
    r = run_cli("sft.py", str(f / "sub"), cli=cli)
    assert r.returncode == 2 and f"is under {f}, which is a file" in r.stderr


def test_hidden_folders_of_a_data_directory_are_not_data(tmp_path):
    from jaxalign import data

    d = tmp_path / "d"
    (d / ".ipynb_checkpoints").mkdir(parents=True)
    (d / "__pycache__").mkdir()
    (d / "train.jsonl").write_text(jsonl(MSGS, MSGS))
    shutil.copy(d / "train.jsonl", d / ".ipynb_checkpoints" / "train.jsonl")  # a notebook's copy
    (d / "__pycache__" / "train.jsonl").write_text(jsonl(MSGS))
    (d / ".hidden_train.jsonl").write_text(jsonl(MSGS))
    rows = data.read(str(d), kind="sft", split="train")
    assert len(rows) == 2


def test_tokenizer_larger_than_the_vocabulary(tmp_path, cli):
    tok = tmp_path / "tok"
    shutil.copytree(os.path.join(EMBEDDED, "tokenizer"), tok)
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(tok))
    t.add_tokens(["<|newtok1|>", "<|newtok2|>"], special_tokens=True)  # chat tokens added, model not resized
    t.save_pretrained(str(tok))
    wd = tmp_path / "run"
    r = run_cli("sft.py", str(wd), f"--config.model.tokenizer={tok}", cli=cli)
    check_one_line_error(r, wd, f"config.model.tokenizer='{tok}': model.tokenizer='{tok}' has 386 tokens but")
    assert "the model's vocabulary is 384" in r.stderr


def test_offline_max_length_past_the_model_positions(tmp_path, cli):
    wd = tmp_path / "run"
    r = run_cli("sft.py", str(wd), "--config.data.max_length=200", cli=cli)
    check_one_line_error(
        r, wd, "config.data.max_length=200: sequences of up to 200 tokens exceed the model's"
    )


@pytest.mark.parametrize(
    "source,match",
    [
        ("import nope_not_a_module_x", "cannot import"),
        ("def reward(a, b:\n    return 1\n", "raised SyntaxError"),
        ("raise RuntimeError('boom at import')\n", "raised RuntimeError: boom at import"),
    ],
)
def test_a_plugin_module_that_fails_to_import(tmp_path, monkeypatch, source, match):
    from jaxalign import plugins

    (tmp_path / "myplug.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=match):
        plugins.resolve_fn("myplug:reward")


def test_a_check_function_returning_a_string_is_one_line():
    from jaxalign.errors import ConfigError
    from jaxalign.trainers import rewards

    with pytest.raises(ConfigError, match=r"returned 'yes', not a bool, on rollout row 0"):
        rewards.host_rewards(["3 plus 5 is 8."], ["8"], check_fn=lambda a, t: "yes")
    out = rewards.host_rewards(["x"], ["8"], check_fn=lambda a, t: 1.0)
    assert out["correct"][0] == 1.0


def test_a_held_out_set_smaller_than_the_eval_batch_is_evaluated(tmp_path, cli):
    rows = [json.loads(x) for x in open(os.path.join(EMBEDDED, "sft_test.jsonl"))][:10]
    ev = tmp_path / "eval.jsonl"
    ev.write_text(jsonl(*rows))
    wd = tmp_path / "run"
    r = run_cli(
        "sft.py",
        str(wd),
        f"--config.data.eval={ev}",
        "--config.train.num_steps=2",
        "--config.train.eval_every=2",
        "--config.train.eval_batch_size=64",
        "--config.train.export_hf=False",
        cli=cli,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    with open(wd / "metrics.jsonl") as f:
        evals = [json.loads(x) for x in f if "eval/loss" in x]
    assert [e["step"] for e in evals] == [0, 2] and all(e["eval/num_batches"] == 1 for e in evals)


def test_a_causal_lm_as_reward_model_is_refused(tmp_path):
    from jaxalign import defaults
    from jaxalign.checkpoints import hf
    from jaxalign.errors import ConfigError, UserError
    from jaxalign.synthesize import synthesize_pairs
    from jaxalign.trainers import rl

    sft, rm = os.path.join(EMBEDDED, "checkpoints", "sft"), os.path.join(EMBEDDED, "checkpoints", "reward")
    assert hf.is_reward_checkpoint(sft) is False and hf.is_reward_checkpoint(rm) is True
    c = defaults.load_config_file(os.path.join(ROOT, "configs", "grpo.py"))
    with c.unlocked():
        c.reward.model_path = sft
    with pytest.raises(
        ConfigError, match=r"config.reward.model_path=.*: is a causal-LM checkpoint, not a reward model"
    ):
        rl.validate(c, 1)
    with pytest.raises(UserError, match="a causal-LM checkpoint, not a reward model"):
        synthesize_pairs(sft, "x.jsonl", str(tmp_path / "out.jsonl"), reward_model=sft)


def test_cai_out_that_is_a_file(tmp_path, cli):
    f = tmp_path / "out"
    f.write_text("x")
    r = cli("jaxalign.cai", f"--out={f}", "--max_prompts=2")
    assert (
        r.returncode == 2
        and r.stderr == f"error: --out={f}: is a file; expected a directory (or a new path)\n"
    )


def test_a_relative_tokenizer_path_that_does_not_exist_is_not_a_hub_name(tmp_path, cli):
    (tmp_path / "runs").mkdir()
    wd = tmp_path / "run"
    r = run_cli(
        "sft.py", str(wd), "--config.model.tokenizer=runs/sft/hf", cli=lambda *a: cli(*a, cwd=tmp_path)
    )
    check_one_line_error(r, wd, "config.model.tokenizer='runs/sft/hf': no such file or directory")


def _tiny_sft(tmp_path, cli, wd, *extra):
    return run_cli(
        "sft.py",
        str(wd),
        "--config.train.num_steps=2",
        "--config.train.eval_every=0",
        "--config.data.eval=",
        "--config.train.export_hf=False",
        *extra,
        cli=cli,
    )


def test_resuming_into_another_runs_workdir_names_the_difference(tmp_path, cli):
    """A workdir written by SFT, then DPO (another objective) and SFT on other data pointed at it: one line
    naming what differs, before anything is restored; the checkpoint is untouched."""
    wd = tmp_path / "run"
    r = _tiny_sft(tmp_path, cli, wd)
    assert r.returncode == 0, r.stderr[-2000:]
    before = sorted(p.name for p in (wd / "checkpoints").iterdir())
    r = run_cli("dpo.py", str(wd), "--config.train.num_steps=4", "--config.data.eval=", cli=cli)
    assert (
        r.returncode == 2
        and "written by another run: its objective differs ('sft' there, 'dpo' here)" in r.stderr
    )
    assert r.stderr.count("\n") == 1, r.stderr
    other = tmp_path / "other.jsonl"
    rows = [json.loads(x) for x in open(os.path.join(EMBEDDED, "sft_test.jsonl"))][:64]
    other.write_text(jsonl(*rows))
    r = _tiny_sft(tmp_path, cli, wd, f"--config.data.train={other}", "--config.train.num_steps=4")
    assert r.returncode == 2 and "its training data differs (rows: 3300 there, 64 here)" in r.stderr, r.stderr
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == before
    # The same command resumes (nothing differs); train.resume=never refuses, must needs a checkpoint.
    r = _tiny_sft(tmp_path, cli, wd, "--config.train.num_steps=3")
    assert r.returncode == 0 and "Resumed from" in r.stdout, r.stderr[-2000:]
    r = _tiny_sft(tmp_path, cli, wd, "--config.train.resume=never")
    assert r.returncode == 2 and "config.train.resume='never'" in r.stderr
    r = _tiny_sft(tmp_path, cli, tmp_path / "fresh", "--config.train.resume=must")
    assert r.returncode == 2 and "config.train.resume='must': the workdir has no checkpoint" in r.stderr
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("kind", ["surrogate", "binary parquet"])
def test_text_no_tokenizer_takes_is_one_line(tmp_path, cli, kind):
    if kind == "surrogate":
        path = tmp_path / "a.jsonl"
        path.write_text(
            '{"messages":[{"role":"user","content":"hi \\ud800"},{"role":"assistant","content":"ok"}]}\n'
        )
        config, expected = "sft.py", f"{path} line 1: a text field holds a lone UTF-16 surrogate (U+D800)"
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "a.parquet"
        pq.write_table(
            pa.table({"prompt": [b"ok", b"\xff\xfe"], "chosen": [b"a", b"b"], "rejected": [b"c", b"d"]}),
            str(path),
        )
        config, expected = "dpo.py", f"{path} row 2: a text field holds bytes that are not UTF-8 (0xff)"
    wd = tmp_path / "run"
    r = run_cli(config, str(wd), f"--config.data.train={path}", "--config.data.eval=", cli=cli)
    check_one_line_error(r, wd, expected)
    r = cli(
        "jaxalign.data.inspect",
        f"--config={os.path.join(ROOT, 'configs', config)}",
        f"--config.data.train={path}",
        "--config.data.eval=",
    )
    assert r.returncode == 2 and r.stderr == f"error: {expected}; expected valid Unicode text\n"


def test_tfds_sources_reach_the_loader_or_say_what_is_missing(tmp_path, cli):
    import importlib.util

    wd = tmp_path / "run"
    r = run_cli("sft.py", str(wd), "--config.data.train=tfds:mnist", cli=cli)
    if importlib.util.find_spec("tensorflow_datasets") is None:
        check_one_line_error(
            r, wd, "config.data.train='tfds:mnist': tfds: sources need `pip install tensorflow-datasets`"
        )
    else:
        assert "no such file" not in r.stderr


def test_skip_bad_rows(tmp_path, cli):
    from jaxalign import data
    from jaxalign.errors import DataError

    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "r"}]}
    path = tmp_path / "a.jsonl"
    path.write_text(jsonl(MSGS, bad, MSGS, bad, MSGS))
    rows = data.read(str(path), kind="sft", skip_bad_rows=2)
    assert len(rows) == 3 and len(rows.skipped) == 2
    assert rows.skipped[0].startswith(f"{path} line 2: ") and rows.skipped[1].startswith(f"{path} line 4: ")
    assert rows.locate(2) == f"{path} line 5"  # the kept rows keep their own lines
    with pytest.raises(DataError, match=rf"{path} line 4: .*the 2th bad row: more than data.skip_bad_rows=1"):
        data.read(str(path), kind="sft", skip_bad_rows=1)
    with pytest.raises(DataError, match=rf"^{path} line 2: "):
        data.read(str(path), kind="sft")
    wd = tmp_path / "run"
    r = _tiny_sft(
        tmp_path,
        cli,
        wd,
        f"--config.data.train={path}",
        "--config.data.skip_bad_rows=2",
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_kto_from_preference_rows_is_unpaired(tmp_path, cli):
    from jaxalign import data

    pref = os.path.join(EMBEDDED, "preference_test.jsonl")
    pairs = data.read(pref, kind="preference")
    rows = data.read(pref, kind="kto")
    assert len(rows) == 2 * len(pairs)
    assert rows[0] == {"prompt": pairs[0]["prompt"], "completion": pairs[0]["chosen"], "label": True}
    assert rows[1] == {"prompt": pairs[0]["prompt"], "completion": pairs[0]["rejected"], "label": False}
    assert rows.locate(3) == f"{pref} line 2 (rejected)"
    wd = tmp_path / "run"
    r = run_cli(
        "kto.py",
        str(wd),
        f"--config.data.train={pref}",
        "--config.data.eval=",
        "--config.train.num_steps=2",
        "--config.train.export_hf=False",
        cli=cli,
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_kto_from_kto_files_and_preference_files_together():
    """KTO rows from a list of files of both formats (each file read in its own): the pairs are unpaired,
    every row still names its own file and line (this crashed at tokenization with a KeyError)."""
    from jaxalign import data

    kto = os.path.join(EMBEDDED, "kto_test.jsonl")
    pref = os.path.join(EMBEDDED, "preference_test.jsonl")
    alone = data.read(kto, kind="kto")
    rows = data.read([kto, pref], kind="kto")
    assert len(rows) == len(alone) + 2 * len(data.read(pref, kind="preference"))
    assert rows[0] == alone[0] and rows.locate(0) == f"{kto} line 1"
    assert rows.locate(len(alone) + 1) == f"{pref} line 1 (rejected)"
    assert rows[len(alone)]["label"] is True and "completion" in rows[len(rows) - 1]


def test_a_hub_name_offline_is_one_line(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wd = tmp_path / "run"
    r = run_cli("sft.py", str(wd), "--config.model.tokenizer=someorg/no-such-tokenizer", cli=cli)
    check_one_line_error(
        r,
        wd,
        "someorg/no-such-tokenizer: not a local directory, not in the Hugging Face cache, and the hub cannot be reached (HF_HUB_OFFLINE is set)",
    )
    r = run_cli("sft.py", str(wd), "--config.data.train=someorg/no-such-data", cli=cli)
    check_one_line_error(
        r,
        wd,
        "someorg/no-such-data: not a local file or directory, and the hub cannot be reached (HF_HUB_OFFLINE is set)",
    )


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--size=huge"], "error: argument --size: invalid choice: 'huge'"),
        (["--nonsense"], "error: unrecognized arguments: --nonsense"),
    ],
)
def test_pipeline_bad_arguments_are_one_line(args, expected, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pipeline_cli", os.path.join(ROOT, "launch", "pipeline.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as e:
        mod.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(expected) and err.count("\n") == 1, err
