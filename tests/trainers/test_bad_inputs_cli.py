"""Bad non-data inputs through the CLI: flags, config values, checkpoints, tokenizers, resume checkpoints.

Every case must end with exit code 2, exactly one line on stderr, `error: <field or path>: <why>`, and
nothing written to the workdir. Each run fails before anything is compiled (flag errors before JAX is even
imported). A few cases start a real process (`python -m jaxalign.main` / `jaxalign.sample`, seconds of
imports each); the others run the same module in this process (the `cli` fixture of tests/conftest.py: the
same flag parsing, validation and `run_main` error path, milliseconds each, with this process's 8 devices).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMBEDDED = os.path.join(ROOT, "jaxalign", "assets", "embedded")
SFT = os.path.join(EMBEDDED, "checkpoints", "sft")


def run_cli(config, workdir, *overrides, devices=1, module="jaxalign.main", cli=None):
    """`python -m <module> [--config=configs/<config> --workdir=<workdir>] <overrides>`: in this process
    through the `cli` fixture when given (JAX has 8 devices there), else as a subprocess on `devices`."""
    args = [f"--config={os.path.join(ROOT, 'configs', config)}", f"--workdir={workdir}"] if config else []
    if cli is not None:
        return cli(module, *args, *overrides)
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return subprocess.run(
        [sys.executable, "-m", module, *args, *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def files_under(path):
    return sorted(
        os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
    ) + sorted(os.path.relpath(os.path.join(d, s), path) + "/" for d, ss, _ in os.walk(path) for s in ss)


def assert_one_line_error(r, *expected):
    """Exit code 2, stderr exactly `error: ...` on one line, containing each of `expected`."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in r.stderr
    for e in expected:
        assert e in lines[0], (e, lines[0])
    return lines[0]


def check(tmp_path, config, overrides, *expected, devices=1, cli=None):
    wd = tmp_path / "wd"
    r = run_cli(config, str(wd), *overrides, devices=devices, cli=cli)
    line = assert_one_line_error(r, *expected)
    assert not wd.exists() or not os.listdir(wd), files_under(wd)
    return line


# ------------------------------------------------------------------------------------------------ flags
# absl / ml_collections parse errors: no JAX import, well under a second each.
FLAG_CASES = [
    ("dpo.py", ["--config.dpo.betta=0.1"], ["config.dpo.betta=0.1", 'did you mean "beta"']),
    ("sft.py", ["--config.nope.x=1"], ["config.nope.x=1", "config has no field 'nope'"]),
    ("sft.py", ["--config.dpo.beta=0.1"], ["config.dpo.beta=0.1", "no field 'dpo'"]),  # another objective's
    ("reward.py", ["--config.train.batch_size=abc"], ["config.train.batch_size=abc", "expected an integer"]),
    (
        "kto.py",
        ["--config.optimizer.learning_rate=fast"],
        ["config.optimizer.learning_rate=fast", "expected a number"],
    ),
    (
        "sft.py",
        ["--config.train.export_hf=maybe"],
        ["config.train.export_hf=maybe", "expected true or false"],
    ),
    ("grpo.py", ["--config.grpo=3"], ["config.grpo=3"]),
    ("nope.py", [], ["--config=", "nope.py: no such file"]),
    ("grpo.py:nope", [], ["grpo.py:nope", "unknown variant; expected one of"]),  # get_config raises
    ("dpo.py", ["--no_such_flag=1"], ["no_such_flag"]),
]


@pytest.mark.parametrize(
    "config,overrides,expected", FLAG_CASES, ids=[f"{c[0]}:{(c[1] or ['config'])[0]}" for c in FLAG_CASES]
)
def test_flag_errors(tmp_path, config, overrides, expected, cli):
    check(tmp_path, config, overrides, *expected, cli=cli)


def test_config_file_with_a_syntax_error(tmp_path, cli):
    bad = tmp_path / "configs" / "broken.py"
    bad.parent.mkdir()
    bad.write_text("def get_config(:\n")
    r = run_cli(None, "", f"--config={bad}", f"--workdir={tmp_path / 'wd'}", cli=cli)
    assert_one_line_error(r, f"{bad} line 1:")
    assert not (tmp_path / "wd").exists()


# ------------------------------------------------------------------------------------------ config values
# Validated before anything is loaded: one JAX import (~3 s) each.
CONFIG_CASES = [
    ("dpo.py", ["--config.dpo.label_smoothing=0.6"], ["config.dpo.label_smoothing=0.6", "[0, 0.5)"]),
    ("sft.py", ["--config.optimizer.learning_rate=-1"], ["config.optimizer.learning_rate=-1.0", "> 0"]),
    ("reward.py", ["--config.optimizer.name=adamx"], ["config.optimizer.name='adamx'", "adamw, adam or sgd"]),
    ("kto.py", ["--config.optimizer.b2=1.0"], ["config.optimizer.b2=1.0", "[0, 1)"]),
    (
        "sft.py",
        ["--config.train.batch_size=30", "--config.train.grad_accum_steps=4"],
        ["config.train.grad_accum_steps=4", "must divide train.batch_size=30"],
    ),
    ("sft.py", ["--config.mesh.fsdp=3"], ["config.mesh=", "does not divide the 8 devices"]),
    (
        "sft.py",
        ["--config.data.max_prompt_length=96"],
        ["config.data.max_prompt_length=96", "data.max_length=96"],
    ),
    (
        "dpo.py",
        ["--config.lora.enabled=True", "--config.lora.target_modules=qproj"],
        ["config.lora.target_modules=('qproj',)", "unknown module 'qproj'"],
    ),
    ("grpo.py", ["--config.grpo.group_size=1"], ["config.grpo.group_size=1", ">= 2"]),
    ("ppo.py", ["--config.ppo.gamma=1.5"], ["config.ppo.gamma=1.5", "[0, 1]"]),
    (
        "grpo.py",
        ["--config.rollout.max_new_tokens=40"],
        ["config.rollout.max_new_tokens=40", "data.max_length=56"],
    ),
    ("simpo.py", ["--config.model.dtype=float16"], ["config.model.dtype='float16'", "float32 or bfloat16"]),
    ("kto.py", ["--config.kto.desirable_weight=0"], ["config.kto.desirable_weight=0.0", "> 0"]),
    ("sft.py", ["--config.objective=dpox"], ["config.objective='dpox'", "unknown objective"]),
    ("eval.py", ["--config.eval.top_p=0"], ["config.eval.top_p=0.0", "(0, 1]"]),
    ("dpo.py", ["--config.model.head_positions=some"], ["config.model.head_positions='some'", "loss or all"]),
    ("dpo.py", ["--config.dpo.dpop_lambda=-1"], ["config.dpo.dpop_lambda=-1.0", ">= 0"]),
]


@pytest.mark.parametrize(
    "config,overrides,expected", CONFIG_CASES, ids=[f"{c[0]}:{c[1][-1]}" for c in CONFIG_CASES]
)
def test_config_value_errors(tmp_path, config, overrides, expected, cli):
    check(tmp_path, config, overrides, *expected, cli=cli)


def test_model_path_that_does_not_exist(tmp_path, cli):
    missing = str(tmp_path / "no_such_checkpoint")
    check(
        tmp_path,
        "dpo.py",
        [f"--config.model.path={missing}"],
        f"config.model.path='{missing}'",
        "no such file or directory",
        cli=cli,
    )


def test_verbosity_1_shows_the_traceback(tmp_path, cli):
    wd = tmp_path / "wd"
    r = run_cli("dpo.py", str(wd), "--config.dpo.beta=-1", "--verbosity=1", cli=cli)
    assert r.returncode == 2
    assert "Traceback (most recent call last)" in r.stderr and "ConfigError" in r.stderr
    assert [l for l in r.stderr.splitlines() if l.startswith("error: ")] == [
        "error: config.dpo.beta=-1.0: must be > 0"
    ]
    assert not wd.exists()


# ------------------------------------------------------------------------------- checkpoints, tokenizers
# Corrupt copies of the embedded SFT checkpoint; each run fails while loading (before data or compiling).
def corrupt_copy(tmp_path, how):
    d = tmp_path / f"ckpt_{how}"
    shutil.copytree(SFT, d)
    cfg = json.loads((d / "config.json").read_text())
    weights = d / "model.safetensors"
    if how == "no_config":
        (d / "config.json").unlink()
    elif how == "config_not_json":
        (d / "config.json").write_text('{"model_type": "llama",\n  "hidden_size": 64,,\n}')
    elif how == "bert":
        (d / "config.json").write_text(json.dumps(dict(cfg, model_type="bert")))
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[:200_000])
    elif how == "garbage_header":
        weights.write_bytes(b"\xff" * 64)
    elif how == "wider":  # config.json of another size than the tensors
        (d / "config.json").write_text(json.dumps(dict(cfg, hidden_size=128)))
    elif how == "gpt2":  # a checkpoint of another model type than config.json says
        (d / "config.json").write_text(
            json.dumps(
                dict(
                    cfg,
                    model_type="gpt2",
                    architectures=["GPT2LMHeadModel"],
                    n_embd=64,
                    n_head=4,
                    n_layer=2,
                    n_positions=128,
                )
            )
        )
    elif how == "pickled":
        weights.unlink()
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    elif how == "tokenizer_truncated":
        tok = d / "tokenizer.json"
        tok.write_bytes(tok.read_bytes()[:3000])
    elif how == "no_tokenizer":
        for f in d.glob("tokenizer*"):
            f.unlink()
    else:
        raise ValueError(how)
    return str(d)


CHECKPOINT_CASES = [
    ("sft.py", "model.path", "no_config", ["no config.json"]),
    ("dpo.py", "model.path", "config_not_json", ["config.json line 2: not valid JSON"]),
    ("reward.py", "model.path", "bert", ["config.json: model_type='bert'", "supported model types"]),
    (
        "sft.py",
        "model.path",
        "truncated",
        ["model.safetensors: not a readable safetensors file", "truncated"],
    ),
    ("kto.py", "model.path", "garbage_header", ["model.safetensors: not a readable safetensors file"]),
    (
        "sft.py",
        "model.path",
        "wider",
        ["tensor 'model.embed_tokens.weight' has shape (384, 64)", "(384, 128)", "another size"],
    ),
    ("orpo.py", "model.path", "gpt2", ["tensor 'wte.weight'", "not found", "another model type"]),
    ("sft.py", "model.path", "pickled", ["pickled weights (pytorch_model.bin)", "safetensors only"]),
    ("sft.py", "model.tokenizer", "tokenizer_truncated", ["tokenizer.json line 170: not valid JSON"]),
    ("simpo.py", "model.tokenizer", "no_tokenizer", ["no tokenizer files"]),
    ("grpo.py", "reward.model_path", "truncated", ["model.safetensors: not a readable safetensors file"]),
    ("eval.py", "eval.reference", "bert", ["config.json: model_type='bert'"]),
]


@pytest.mark.parametrize(
    "config,field,how,expected", CHECKPOINT_CASES, ids=[f"{c[0]}:{c[1]}:{c[2]}" for c in CHECKPOINT_CASES]
)
def test_checkpoint_errors(tmp_path, config, field, how, expected, cli):
    path = corrupt_copy(tmp_path, how)
    overrides = [f"--config.{field}={path}"]
    in_a_process = (config, field, how) == ("sft.py", "model.path", "truncated")  # one as a real process
    check(tmp_path, config, overrides, path, *expected, cli=None if in_a_process else cli)


def test_corrupt_resume_checkpoint_in_the_workdir(tmp_path, cli):
    """An orbax step directory that is incomplete: named, and the workdir is left as it was."""
    wd = tmp_path / "wd"
    (wd / "checkpoints" / "7").mkdir(parents=True)
    before = files_under(wd)
    r = run_cli("sft.py", str(wd), "--config.train.num_steps=10", "--config.data.eval=", cli=cli)
    assert_one_line_error(
        r, os.path.join(str(wd), "checkpoints", "7"), "cannot resume", "delete it to start over"
    )
    assert files_under(wd) == before


def test_truncated_resume_checkpoint_in_the_workdir(tmp_path, cli):
    """A complete orbax step whose files were cut short (a disk that filled up, a partial copy)."""
    import jax.numpy as jnp
    from jaxalign.checkpoints.orbax_state import StateCheckpointer

    wd = tmp_path / "wd"
    ckpt = StateCheckpointer(str(wd / "checkpoints"), async_save=False)
    ckpt.save(4, {"w": jnp.ones((4, 4))}, {"position": 1})
    ckpt.close()
    truncated = 0
    for f in (wd / "checkpoints" / "4" / "state").rglob("*"):  # the arrays' files, read by the restore
        if f.is_file() and f.stat().st_size > 10:
            f.write_bytes(f.read_bytes()[:10])
            truncated += 1
    assert truncated
    before = files_under(wd)
    r = run_cli("sft.py", str(wd), "--config.train.num_steps=10", "--config.data.eval=", cli=cli)
    assert_one_line_error(r, os.path.join(str(wd), "checkpoints", "4"), "cannot resume")
    assert files_under(wd) == before


def test_resume_checkpoint_metadata_not_json(tmp_path):
    """orbax reads `_CHECKPOINT_METADATA` when it opens the directory (logging an error of its own): named
    before that. In-process: the CLI path is the same as in the two tests above."""
    import jax.numpy as jnp
    from jaxalign.checkpoints.orbax_state import StateCheckpointer
    from jaxalign.errors import CheckpointError

    ckpt = StateCheckpointer(str(tmp_path), async_save=False)
    ckpt.save(2, {"w": jnp.ones((2,))}, {"position": 1})
    ckpt.close()
    (tmp_path / "2" / "_CHECKPOINT_METADATA").write_text('{"item_han')
    with pytest.raises(CheckpointError, match=r"/2: cannot resume .*_CHECKPOINT_METADATA is not JSON"):
        StateCheckpointer(str(tmp_path))


# ------------------------------------------------------------------------------------ other entry points
def test_sample_cli_errors(tmp_path, cli):
    r = run_cli(None, "", "--prompt=hi", module="jaxalign.sample")  # a real process
    assert_one_line_error(r, "--checkpoint: is required")
    r = run_cli(
        None,
        "",
        f"--checkpoint={SFT}",
        "--prompt=hi",
        "--max_new_tokens=many",
        module="jaxalign.sample",
        cli=cli,
    )
    assert_one_line_error(r, "--max_new_tokens=many: expected an integer")
    path = corrupt_copy(tmp_path, "truncated")
    r = run_cli(None, "", f"--checkpoint={path}", "--prompt=hi", module="jaxalign.sample", cli=cli)
    assert_one_line_error(r, f"{path}/model.safetensors: not a readable safetensors file")


def test_synthesize_cli_errors(tmp_path, cli):
    out = tmp_path / "pairs.jsonl"
    r = run_cli(
        None,
        "",
        f"--policy={SFT}",
        f"--prompts={tmp_path / 'none.jsonl'}",
        f"--out={out}",
        "--reward_fn=jaxalign.data.embedded:reward",
        module="jaxalign.synthesize",
        cli=cli,
    )
    assert_one_line_error(r, f"{tmp_path / 'none.jsonl'}: no such file")
    assert not out.exists()
