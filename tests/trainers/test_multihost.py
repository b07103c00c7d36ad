"""Two processes with jax.distributed (gloo on CPU) follow the one-process run on the same 4 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = [
    "--config.train.num_steps=3",
    "--config.train.batch_size=8",
    "--config.train.log_every=1",
    "--config.train.eval_every=0",
    "--config.data.eval=",
    "--config.train.export_hf=False",
    "--config.optimizer.warmup_steps=1",
]


def _cmd(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "jaxalign.main",
        f"--config={ROOT}/configs/dpo.py",
        f"--workdir={workdir}",
        *ARGS,
        *extra,
    ]


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(l)["train/loss"] for l in f if "train/loss" in l]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    env1 = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    single = str(tmp_path / "single")
    r = subprocess.run(_cmd(single), cwd=ROOT, env=env1, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    multi = str(tmp_path / "multi")
    port = _free_port()
    env2 = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [
        subprocess.Popen(
            _cmd(
                multi,
                "--config.distributed.initialize=yes",
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}",
            ),
            cwd=ROOT,
            env=env2,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sigterm_on_one_process_stops_both_at_the_same_step(tmp_path):
    """Only process 1 gets SIGTERM (after step 2): both processes agree to stop after step 3 (the vote is
    read one step later), write one checkpoint together and exit with 75; the rerun finishes and follows the
    one-process run."""
    from jaxalign.trainers import preemption

    steps = ["--config.train.num_steps=5"]
    env1 = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    single = str(tmp_path / "single")
    r = subprocess.run(_cmd(single, *steps), cwd=ROOT, env=env1, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    multi = str(tmp_path / "multi")

    def run_two(signal_process=None):
        port = _free_port()
        procs = []
        for i in range(2):
            env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
            if i == signal_process:
                env[preemption.TEST_SIGNAL_ENV] = "2"
            procs.append(
                subprocess.Popen(
                    _cmd(
                        multi,
                        *steps,
                        "--config.distributed.initialize=yes",
                        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                        "--config.distributed.num_processes=2",
                        f"--config.distributed.process_id={i}",
                    ),
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        return procs, [p.communicate(timeout=600) for p in procs]

    procs, outs = run_two(signal_process=1)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == preemption.EXIT_PREEMPTED, err[-3000:]
    assert "preempted at step 3: checkpoint saved to" in outs[0][0]  # printed by process 0
    assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["3"]
    procs, outs = run_two()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "at step 3" in outs[0][0]
    np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5, atol=1e-6)
