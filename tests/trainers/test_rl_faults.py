"""Faults in RL runs (issue 26): a PPO or GRPO run stopped by SIGTERM or SIGKILL while it samples, scores,
updates or saves resumes, rerun with the same command, to the uninterrupted run's numbers bit for bit.

Each case is a real process (`python -m jaxalign.main`), checkpointing every step. The default run takes
two points (GRPO killed mid-update, PPO sent SIGTERM mid-scoring); `python -m pytest -m faults
tests/trainers/test_rl_faults.py` draws 10 distinct (step, phase, signal) points per algorithm."""

import json
import os
import random
import signal
import subprocess
import sys

import pytest

from jaxalign.checkpoints.orbax_state import TEST_KILL_ENV
from jaxalign.trainers.preemption import EXIT_PREEMPTED, TEST_FAULT_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 5
ARGS = {
    "grpo": ["--config.grpo.group_size=4", "--config.grpo.num_minibatches=1"],
    "ppo": ["--config.ppo.num_minibatches=1"],
}
KEYS = ("train/loss", "train/grad_norm", "train/reward/env", "train/completion/length")


def _run(objective, workdir, env=None):
    cmd = [
        sys.executable,
        "-m",
        "jaxalign.main",
        f"--config={os.path.join(ROOT, 'configs', objective + '.py')}",
        f"--workdir={workdir}",
        f"--config.train.num_steps={STEPS}",
        "--config.train.batch_size=8",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=1",
        "--config.train.eval_every=0",
        "--config.data.eval=",
        "--config.train.export_hf=False",
        "--config.rollout.max_new_tokens=12",
        *ARGS[objective],
    ]
    full_env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)


def _records(workdir):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "train/loss" in r:
                out[r["step"]] = r  # the last record of a step: the run that got past it
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cache = {}

    def get(objective):
        if objective not in cache:
            wd = tmp_path_factory.mktemp(f"ref_{objective}")
            r = _run(objective, str(wd))
            assert r.returncode == 0, r.stderr[-3000:]
            cache[objective] = _records(str(wd))
        return cache[objective]

    return get


def _cases(n, seed):
    """n distinct (step, phase, signal) points per algorithm, drawn at random (a save is only killed: a
    SIGTERM waits for it)."""
    rng = random.Random(seed)
    grid = [
        (step, phase, sig)
        for step in range(2, STEPS)
        for phase in ("sample", "score", "update", "save")
        for sig in ("TERM", "KILL")
        if not (phase == "save" and sig == "TERM")
    ]
    return [(objective, *point) for objective in ("grpo", "ppo") for point in rng.sample(grid, n)]


def _check(objective, step, phase, sig, tmp_path, reference):
    wd = str(tmp_path / "run")
    env = {TEST_KILL_ENV: str(step)} if phase == "save" else {TEST_FAULT_ENV: f"{step}:{phase}:{sig}"}
    r = _run(objective, wd, env)
    # A SIGTERM stops the run after the step the hosts agree on; when that is the last step the run simply
    # ends (exit 0) with everything done.
    expected = (EXIT_PREEMPTED, 0) if sig == "TERM" else (-signal.SIGKILL,)
    assert r.returncode in expected, (r.returncode, r.stderr[-3000:])
    r = _run(objective, wd)  # the same command again: resumes
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = reference(objective), _records(wd)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        for k in KEYS:
            assert got[s][k] == ref[s][k], (objective, step, phase, sig, s, k, got[s][k], ref[s][k])


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective,step,phase,sig", [("grpo", 3, "update", "KILL"), ("ppo", 3, "score", "TERM")]
)
def test_rl_run_stopped_anywhere_resumes_bit_for_bit(objective, step, phase, sig, tmp_path, reference):
    _check(objective, step, phase, sig, tmp_path, reference)


@pytest.mark.faults
@pytest.mark.parametrize("objective,step,phase,sig", _cases(10, seed=2026))
def test_rl_faults_at_ten_random_points(objective, step, phase, sig, tmp_path, reference):
    _check(objective, step, phase, sig, tmp_path, reference)
