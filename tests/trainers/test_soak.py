"""Soak (issue 26; opt-in: `python -m pytest -m faults tests/trainers/test_soak.py`): 1,000 DPO steps with a
SIGTERM every 50 steps, each stop rerun with the same command, end with the uninterrupted run's parameters
(the exported safetensors, byte for byte)."""

import hashlib
import os
import subprocess
import sys

import pytest

from jaxalign.trainers.preemption import EXIT_PREEMPTED, TEST_SIGNAL_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, EVERY = 1000, 50


def _run(workdir, env=None):
    cmd = [
        sys.executable,
        "-m",
        "jaxalign.main",
        f"--config={os.path.join(ROOT, 'configs', 'dpo.py')}",
        f"--workdir={workdir}",
        f"--config.train.num_steps={STEPS}",
        "--config.train.eval_every=0",
        "--config.data.eval=",
        "--config.train.log_every=50",
    ]
    full_env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=3600)


def _weights(workdir):
    with open(os.path.join(workdir, "hf", "model.safetensors"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.faults
def test_dpo_soak_sigterm_every_50_steps(tmp_path):
    ref = str(tmp_path / "ref")
    r = _run(ref)
    assert r.returncode == 0, r.stderr[-3000:]
    wd = str(tmp_path / "run")
    signals = ",".join(str(s) for s in range(EVERY, STEPS, EVERY))
    stops = 0
    while True:
        r = _run(wd, {TEST_SIGNAL_ENV: signals})
        if r.returncode != EXIT_PREEMPTED:
            break
        stops += 1
    assert r.returncode == 0, r.stderr[-3000:]
    assert stops == STEPS // EVERY - 1
    assert _weights(wd) == _weights(ref)
