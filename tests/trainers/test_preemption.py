"""Preemption, kill -9 and non-finite steps (jaxalign/trainers/preemption.py), on real CLI processes.

Every CLI run here is the same 8-step SFT run on one device with NaN injected into the loss of steps 3 and
4 (test-only `JAXALIGN_TEST_INJECT_NAN_AT_STEPS`), so each also checks that skipped steps and their
counters survive a resume. The interrupted runs must end with exactly the uninterrupted run's metrics:
the same process layout, the same compiled step and the same data order give bitwise-equal losses.
"""

import glob
import json
import os
import random
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxalign.trainers import preemption

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 8
NAN_STEPS = (3, 4)
ARGS = [
    f"--config.train.num_steps={STEPS}",
    "--config.train.batch_size=8",
    "--config.train.log_every=1",
    "--config.train.eval_every=0",
    "--config.data.eval=",
    "--config.train.export_hf=False",
    "--config.optimizer.warmup_steps=1",
    "--config.train.max_nonfinite_steps=3",
]


def _env(**extra):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    env[preemption.TEST_NAN_ENV] = ",".join(map(str, NAN_STEPS))
    env.update(extra)
    return env


def _cmd(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "jaxalign.main",
        f"--config={ROOT}/configs/sft.py",
        f"--workdir={workdir}",
        *ARGS,
        *extra,
    ]


def run(workdir, *extra, **env):
    return subprocess.run(
        _cmd(workdir, *extra), cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=600
    )


def train_records(workdir):
    """step -> the last train record written for it (a resumed run's records follow the first's)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "train/loss" in r:
                out[r["step"]] = r
    return out


def assert_same_run(workdir, reference):
    got = train_records(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for k in (
        "train/loss",
        "train/grad_norm",
        "train/param_norm",
        "train/nonfinite",
        "train/skipped_nonfinite",
        "train/nonfinite_in_a_row",
    ):
        np.testing.assert_array_equal(
            [got[s][k] for s in sorted(got)], [reference[s][k] for s in sorted(got)], err_msg=k
        )


def checkpoint_params_finite(workdir):
    """Asserts every complete checkpoint's parameters and optimiser state are finite; returns the steps."""
    import orbax.checkpoint as ocp

    steps = sorted(
        int(os.path.basename(p))
        for p in glob.glob(os.path.join(workdir, "checkpoints", "*"))
        if os.path.basename(p).isdigit()
    )
    for step in steps:
        tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
        leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
        assert all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == "f"), step
    return steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("uninterrupted"))
    r = run(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    records = train_records(wd)
    assert [records[s]["train/nonfinite"] for s in range(1, STEPS + 1)] == [0, 0, 1, 1, 0, 0, 0, 0]
    assert records[STEPS]["train/skipped_nonfinite"] == 2 and records[STEPS]["train/nonfinite_in_a_row"] == 0
    # a skipped update leaves the parameters exactly as they were
    assert records[2]["train/param_norm"] == records[3]["train/param_norm"] == records[4]["train/param_norm"]
    assert records[5]["train/param_norm"] != records[4]["train/param_norm"]
    assert np.isnan(records[3]["train/loss"]) and np.isfinite(records[5]["train/loss"])
    assert checkpoint_params_finite(wd) == [STEPS]
    return records


@pytest.mark.slow
def test_sigterm_at_random_steps_resumes_to_identical_losses(reference, tmp_path):
    wd = str(tmp_path / "run")
    # 1. A real SIGTERM from outside, sent as soon as the run has started (while step 1 compiles).
    p = subprocess.Popen(
        _cmd(wd), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("Training sft"):
            p.send_signal(signal.SIGTERM)
            break
    out, err = p.communicate(timeout=600)
    out = "".join(lines) + out
    assert p.returncode == preemption.EXIT_PREEMPTED, err[-3000:]
    stopped = [l for l in out.splitlines() if l.startswith("preempted at step ")]
    assert len(stopped) == 1 and "rerun the same command to resume" in stopped[0], out[-2000:]
    first = int(stopped[0].split()[3].rstrip(":"))
    assert 1 <= first < STEPS
    assert checkpoint_params_finite(wd)[-1] == first
    # 2. SIGTERM at random later steps (the run signals itself after dispatching them: deterministic).
    later = range(first + 1, STEPS)
    for step in sorted(random.Random(14).sample(later, min(2, len(later)))):
        r = run(wd, **{preemption.TEST_SIGNAL_ENV: str(step)})
        assert r.returncode == preemption.EXIT_PREEMPTED, r.stderr[-3000:]
        assert f"Resumed from {wd}/checkpoints at step" in r.stdout
        assert f"preempted at step {step}: checkpoint saved to {wd}/checkpoints" in r.stdout
        assert checkpoint_params_finite(wd)[-1] == step  # NaN never reaches a checkpoint
    # 3. The last rerun finishes; every step's metrics equal the uninterrupted run's, with no gap or repeat.
    r = run(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        steps = [json.loads(l)["step"] for l in f if "train/loss" in l]
    assert steps == list(range(1, STEPS + 1))
    assert_same_run(wd, reference)


@pytest.mark.slow
def test_kill_9_during_a_save_restores_the_previous_checkpoint(reference, tmp_path):
    wd = str(tmp_path / "run")
    r = run(wd, "--config.train.checkpoint_every=2", **{"JAXALIGN_TEST_KILL_IN_SAVE_AT_STEP": "4"})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    names = sorted(os.listdir(os.path.join(wd, "checkpoints")))
    assert "2" in names and "4" not in names, names
    assert any(n.startswith("4.orbax-checkpoint-tmp") for n in names), names  # the save was cut short
    r = run(wd, "--config.train.checkpoint_every=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resumed from {wd}/checkpoints at step 2" in r.stdout
    assert not [n for n in os.listdir(os.path.join(wd, "checkpoints")) if "tmp" in n]
    assert_same_run(wd, reference)


@pytest.mark.slow
def test_nonfinite_steps_in_a_row_halt_without_a_nan_checkpoint(tmp_path):
    wd = str(tmp_path / "run")
    r = run(wd, "--config.train.checkpoint_every=1", **{preemption.TEST_NAN_ENV: "2,3,4,5"})
    assert r.returncode == preemption.EXIT_NONFINITE, r.stderr[-3000:]
    halt = [l for l in r.stderr.splitlines() if l.startswith("error: training halted")]
    assert len(halt) == 1 and "3 steps in a row had a non-finite loss or gradient" in halt[0], r.stderr[
        -3000:
    ]
    assert "train.max_nonfinite_steps=3" in halt[0]
    steps = checkpoint_params_finite(wd)
    assert steps and max(steps) < 5


def test_guard_agrees_one_step_later_saves_by_time_and_counts(monkeypatch):
    """The multi-process path (`agree=True`: the jitted max over processes, read one step late) on one
    process, with fake non-finite flags: no model needed."""
    import ml_collections

    t = ml_collections.ConfigDict(
        dict(checkpoint_every=4, checkpoint_every_minutes=0.0, max_nonfinite_steps=2)
    )
    guard = preemption.Guard(
        t, meta={"skipped_nonfinite": 5, "nonfinite_in_a_row": 0}, agree=True, is_chief=False
    )
    try:
        assert guard.after_step(1, np.float32(0)) == preemption.Decision(save=False, stop=False)
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the test process goes on
        assert guard.signal == signal.SIGTERM
        assert guard.after_step(2, np.float32(1)) == (False, False)  # voted now, read at the next step
        assert guard.after_step(3, np.float32(0)) == (True, True)
        assert guard.after_step(4, np.float32(1)) == (True, True)  # a step multiple saves too
        assert guard.counts() == {"skipped_nonfinite": 7.0, "nonfinite_in_a_row": 1.0}
        with pytest.raises(preemption.NonFiniteHalt) as e:
            guard.after_step(5, np.float32(1))
            guard.counts()
        assert e.value.code == preemption.EXIT_NONFINITE and "2 steps in a row" in e.value.message
    finally:
        guard.close()
    assert signal.getsignal(signal.SIGTERM) != guard._handle

    monkeypatch.setattr(preemption.time, "monotonic", lambda: 1e9)  # 30 minutes have passed
    t.checkpoint_every_minutes = 30.0
    guard = preemption.Guard(t, agree=False, is_chief=False)
    try:
        monkeypatch.setattr(preemption.time, "monotonic", lambda: 1e9 + 30 * 60)
        assert guard.after_step(1, np.float32(0)) == (True, False)
    finally:
        guard.close()


@pytest.mark.parametrize("field", ["checkpoint_every", "checkpoint_every_minutes", "max_nonfinite_steps"])
def test_negative_periods_are_config_errors(field):
    import importlib
    from jaxalign.trainers.validate import ConfigError, validate

    c = importlib.import_module("configs.sft").get_config()
    defaults = {"checkpoint_every": 500, "checkpoint_every_minutes": 30.0, "max_nonfinite_steps": 10}
    assert c.train[field] == defaults[field]
    with c.unlocked():
        c.train[field] = -1
    with pytest.raises(ConfigError, match=rf"config\.train\.{field}=-1(\.0)?: must be >= 0"):
        validate(c, 8)
