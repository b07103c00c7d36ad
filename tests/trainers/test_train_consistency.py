"""A sharded run follows the single-device run; an interrupted + resumed run equals an uninterrupted one."""

import importlib
import json
import math
import os

import jax
import numpy as np
import pytest

from jaxalign.trainers.loop import train_and_evaluate


def small_config(name, steps=4, **mesh):
    c = importlib.import_module(f"configs.{name}").get_config()
    with c.unlocked():
        c.train.num_steps = steps
        c.train.batch_size = 8
        c.train.log_every = 1
        c.train.eval_every = 0
        c.data.eval = ""
        c.train.export_hf = False
        c.optimizer.warmup_steps = 1
        for k, v in mesh.items():
            c.mesh[k] = v
    return c


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(l)["train/loss"] for l in f if "train/loss" in l]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpo", "sft"])
def test_sharded_runs_follow_single_device(name, tmp_path):
    single = str(tmp_path / "single")
    train_and_evaluate(small_config(name, data=1, fsdp=1, tensor=1), single, devices=jax.devices()[:1])
    ref = losses(single)
    for mesh in (dict(data=2, fsdp=4, tensor=1), dict(data=1, fsdp=4, tensor=2)):
        wd = str(tmp_path / "_".join(f"{k}{v}" for k, v in mesh.items()))
        train_and_evaluate(small_config(name, **mesh), wd)
        np.testing.assert_allclose(losses(wd), ref, rtol=2e-4, atol=2e-5, err_msg=str(mesh))


@pytest.mark.slow
def test_padding_free_dpo_follows_padded_single_and_sharded(tmp_path):
    padded = str(tmp_path / "padded")
    c = small_config("dpo", data=1, fsdp=1, tensor=1)
    with c.unlocked():
        c.data.packing = False
    train_and_evaluate(c, padded, devices=jax.devices()[:1])
    ref = losses(padded)
    for mesh in (dict(data=1, fsdp=1, tensor=1), dict(data=2, fsdp=4, tensor=1)):
        c = small_config("dpo", **mesh)
        with c.unlocked():
            c.data.packing = True
        wd = str(tmp_path / ("packed_" + "_".join(f"{k}{v}" for k, v in mesh.items())))
        train_and_evaluate(c, wd, devices=jax.devices()[: math.prod(mesh.values())])
        np.testing.assert_allclose(losses(wd), ref, rtol=2e-4, atol=2e-5, err_msg=str(mesh))


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    full = str(tmp_path / "full")
    train_and_evaluate(small_config("dpo", steps=6), full)
    resumed = str(tmp_path / "resumed")
    c = small_config("dpo", steps=6)
    with c.unlocked():
        c.train.checkpoint_every = 3
    train_and_evaluate(c, resumed, stop_after=4)  # "crashes" after step 4; last checkpoint at 3.
    train_and_evaluate(c, resumed)  # resumes at 3, redoes 4, goes on to 6.
    with open(os.path.join(resumed, "metrics.jsonl")) as f:
        after = {}
        for line in f:
            r = json.loads(line)
            if "train/loss" in r:
                after[r["step"]] = r["train/loss"]  # the resumed run's values overwrite the first's
    np.testing.assert_allclose([after[s] for s in range(1, 7)], losses(full), rtol=1e-6, atol=1e-7)
