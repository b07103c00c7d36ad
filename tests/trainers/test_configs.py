"""Every config file loads, is locked, and passes validation; bad configs fail naming their field."""

import glob
import importlib
import os

import pytest

from jaxalign.trainers.validate import ConfigError, validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if not p.endswith(("common.py", "__init__.py"))
)


def load(name):
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_locked_and_valid(name):
    c = load(name)
    assert c.is_locked
    with pytest.raises(AttributeError):
        c.train.no_such_field = 1
    if c.objective == "eval":
        from jaxalign.eval import run as eval_run

        assert eval_run.validate_config(c, num_devices=8) == (1, 8, 1)
    else:  # the module the registry names for the objective (offline setup or RL)
        from jaxalign.trainers import loop

        assert loop.builder(c).validate(c, 8) == (1, 8, 1)


def _bad(mutate, match, num_devices=8):
    c = load("dpo")
    with c.unlocked():
        mutate(c)
    with pytest.raises(ConfigError, match=match):
        validate(c, num_devices=num_devices)


def test_bad_objective():
    _bad(lambda c: setattr(c, "objective", "dpox"), r"config\.objective='dpox': unknown objective")


def test_bad_beta():
    _bad(lambda c: setattr(c.dpo, "beta", 0.0), r"config\.dpo\.beta=0\.0: must be > 0")


def test_bad_loss_type():
    _bad(lambda c: setattr(c.dpo, "loss_type", "sigmod"), r"config\.dpo\.loss_type='sigmod'")


def test_mesh_does_not_match_devices():
    def m(c):
        c.mesh.fsdp, c.mesh.tensor = 3, 1

    _bad(m, r"config\.mesh=.*does not divide the 8 devices")


def test_batch_not_divisible_by_data_axes():
    _bad(lambda c: setattr(c.train, "batch_size", 12), r"config\.train\.batch_size=12: micro-batch 12")


def test_missing_file():
    _bad(
        lambda c: setattr(c.data, "train", "/nonexistent/pairs.jsonl"), r"config\.data\.train=.*no such file"
    )


def test_option_that_does_not_apply():
    import ml_collections

    _bad(lambda c: setattr(c, "sft", ml_collections.ConfigDict()), r"config\.sft=.*does not apply")


def test_bad_lora_rank():
    def m(c):
        c.lora.enabled, c.lora.rank = True, 0

    _bad(m, r"config\.lora\.rank=0: must be an integer >= 1")
