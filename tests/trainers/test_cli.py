"""End-to-end runs of every config from the command line (short, tiny) and the CLI's error path."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(config, workdir, *overrides, devices=1, cli=None):
    """`python -m jaxalign.main --config=configs/<config> --workdir=<workdir> <overrides>` as a subprocess on
    `devices`, or in this process through the `cli` fixture (tests/conftest.py) when given."""
    args = [f"--config={os.path.join(ROOT, 'configs', config)}", f"--workdir={workdir}", *overrides]
    if cli is not None:
        return cli("jaxalign.main", *args)
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, "-m", "jaxalign.main", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


SHORT = [
    "--config.train.num_steps=3",
    "--config.train.batch_size=8",
    "--config.train.log_every=1",
    "--config.train.eval_batch_size=16",
    "--config.train.eval_every=3",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", ["pretrain.py", "sft.py", "reward.py", "dpo.py", "orpo.py", "simpo.py", "kto.py"]
)
def test_config_runs_end_to_end(config, tmp_path):
    wd = str(tmp_path / "run")
    r = run_cli(config, wd, *SHORT)
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_metrics(wd)
    train = [m for m in records if "train/loss" in m]
    assert [m["step"] for m in train] == [1, 2, 3]
    assert any("eval/loss" in m for m in records)
    assert os.path.exists(os.path.join(wd, "hf", "config.json"))
    assert os.path.exists(os.path.join(wd, "hf", "model.safetensors"))


@pytest.mark.slow
def test_dpo_overrides_from_cli(tmp_path):
    wd = str(tmp_path / "ipo")
    r = run_cli(
        "dpo.py",
        wd,
        *SHORT,
        "--config.dpo.loss_type=ipo",
        "--config.dpo.beta=0.5",
        "--config.optimizer.learning_rate=5e-7",
        "--config.train.export_hf=False",
        "--config.dpo.precompute_ref=False",
    )  # the frozen reference copy, run every step
    assert r.returncode == 0, r.stderr[-3000:]
    train = [m for m in read_metrics(wd) if "train/loss" in m]
    assert "train/rewards/accuracies" in train[0]


def test_bad_config_gives_named_error_and_writes_nothing(tmp_path):
    """A real process (the other bad inputs run in-process: tests/*/test_bad_*_cli.py)."""
    wd = tmp_path / "bad"
    r = run_cli("dpo.py", str(wd), "--config.dpo.beta=-1")
    assert r.returncode == 2
    assert "config.dpo.beta=-1" in r.stderr
    assert not wd.exists()


def test_misspelt_override_is_an_error(tmp_path, cli):
    r = run_cli("dpo.py", str(tmp_path / "x"), "--config.dpo.betta=0.1", cli=cli)
    assert r.returncode != 0
    assert "betta" in r.stderr


@pytest.mark.slow
def test_lora_dpo_exports_merged_model_and_peft_adapter(tmp_path):
    wd = str(tmp_path / "lora")
    r = run_cli("dpo.py", wd, *SHORT, "--config.lora.enabled=True", "--config.lora.rank=4")
    assert r.returncode == 0, r.stderr[-3000:]
    train = [m for m in read_metrics(wd) if "train/loss" in m]
    assert len(train) == 3
    assert os.path.exists(os.path.join(wd, "hf", "model.safetensors"))
    with open(os.path.join(wd, "hf", "adapter", "adapter_config.json")) as f:
        assert json.load(f)["r"] == 4


def _ref_cached_run(tmp_path, name, cache, *extra):
    wd = str(tmp_path / name)
    r = run_cli(
        "dpo.py",
        wd,
        *SHORT,
        "--config.train.export_hf=False",
        "--config.dpo.precompute_ref=True",
        f"--config.dpo.ref_cache_dir={cache}",
        "--config.data.eval=",
        *extra,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, [m["train/loss"] for m in read_metrics(wd) if "train/loss" in m]


@pytest.mark.slow
def test_reference_logprobs_are_cached_reused_and_rebuilt_when_corrupt(tmp_path):
    cache = tmp_path / "cache"
    out, first = _ref_cached_run(tmp_path, "a", cache)
    assert "Precomputed reference log-probs" in out and "cached in" in out
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1
    # Another run with other hyper-parameters reads the file: no reference pass.
    out, _ = _ref_cached_run(tmp_path, "b", cache, "--config.dpo.beta=0.3")
    assert "Reference log-probs for" in out and "Precomputed" not in out
    # Same settings again: the same losses as the run that computed them.
    out, again = _ref_cached_run(tmp_path, "c", cache)
    assert "Precomputed" not in out and again == first
    # Another truncation setting is other data: a new key, a new file.
    out, _ = _ref_cached_run(tmp_path, "d", cache, "--config.data.max_length=48")
    assert "Precomputed" in out and len(list(cache.glob("*.safetensors"))) == 2
    # A corrupt file (cut short) is rebuilt, and the rebuilt one gives the first run's losses.
    files[0].write_bytes(files[0].read_bytes()[:40])
    out, rebuilt = _ref_cached_run(tmp_path, "e", cache)
    assert "Precomputed" in out and rebuilt == first
