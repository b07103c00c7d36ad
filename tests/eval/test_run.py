"""The evaluation runner: KL of a model to itself, perplexity = exp(clm_loss), a tiny end-to-end run,
the CLI, and config validation."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxalign import defaults as common
from jaxalign import checkpoints, losses, models, sampling, sharding
from jaxalign.data import pipeline
from jaxalign.eval import SET_METRICS, evaluate_checkpoint, metrics
from jaxalign.eval import run as eval_run
from jaxalign.eval.scoring import make_completion_logprobs_fn, make_nll_fn
from jaxalign.trainers.validate import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT, PRETRAIN, REWARD = (common.asset("checkpoints", n) for n in ("sft", "pretrain", "reward"))
PROMPTS, DECLINE, TEXT = (
    common.asset(f) for f in ("prompts_test.jsonl", "decline_test.jsonl", "pretrain_test.jsonl")
)


def _rows(path, n):
    with open(path) as f:
        return [json.loads(next(f)) for _ in range(n)]


def test_kl_of_a_model_to_itself_is_zero_and_logprobs_match_the_sampler():
    mesh = sharding.make_mesh(1, -1, 1)
    tok = checkpoints.load_tokenizer(SFT)
    cfg, params = checkpoints.load_hf_model(SFT, mesh=mesh)
    _, ref_params = checkpoints.load_hf_model(SFT, mesh=mesh)  # a second, separate copy
    _, other_params = checkpoints.load_hf_model(PRETRAIN, mesh=mesh)
    model = models.Transformer(cfg)
    batch = sampling.build_prompt_batch(tok, [r["prompt"] for r in _rows(PROMPTS, 8)], max_length=32)
    out = sampling.make_generate_fn(
        model, max_new_tokens=8, temperature=0.0, eos_ids=sampling.eos_ids_of(tok), mesh=mesh
    )(params, batch["prompt_ids"], batch["prompt_segment_ids"], jax.random.key(0))
    fn = make_completion_logprobs_fn(model)
    args = (batch["prompt_ids"], batch["prompt_segment_ids"], out.tokens, out.mask)
    lp, ref_lp = np.asarray(fn(params, *args)), np.asarray(fn(ref_params, *args))
    assert metrics.kl_summary(lp, ref_lp, out.mask) == {"kl/sequence": 0.0, "kl/per_token": 0.0}
    # Teacher-forced log-probs are the sampler's untempered ones (KV cache vs full forward: float error).
    np.testing.assert_allclose(lp, np.asarray(out.model_logprobs), atol=1e-4)
    assert np.all(lp[np.asarray(out.mask) == 0] == 0)
    other = metrics.kl_summary(lp, np.asarray(fn(other_params, *args)), out.mask)
    assert other["kl/sequence"] > 0.1  # SFT vs its pre-trained start


def test_perplexity_is_exp_of_clm_loss_on_the_same_data():
    mesh = sharding.make_mesh(1, -1, 1)
    tok = checkpoints.load_tokenizer(SFT)
    cfg, params = checkpoints.load_hf_model(PRETRAIN, mesh=mesh)
    rows = _rows(TEXT, 20)
    ppl = eval_run._perplexity(
        rows,
        tok,
        make_nll_fn(models.Transformer(cfg)),
        params,
        max_length=32,
        batch_size=8,
        batch_sharding=sharding.batch_sharding(mesh),
    )  # 3 batches, padded
    ds = pipeline.build_dataset(rows, kind="clm", tokenizer=tok, max_length=32)
    batch = ds.take(np.arange(len(ds)))
    logits = models.Transformer(cfg).apply(
        {"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"]
    )
    _, m = losses.clm_loss(logits, batch["targets"], batch["loss_mask"])
    assert ppl["num_tokens"] == int(m["num_tokens"]) and ppl["num_sequences"] == len(ds)
    np.testing.assert_allclose(ppl["perplexity"], float(m["perplexity"]), rtol=1e-5)
    np.testing.assert_allclose(
        ppl["perplexity"],
        np.exp(float(losses.clm_loss(logits, batch["targets"], batch["loss_mask"])[0])),
        rtol=1e-5,
    )


@pytest.mark.slow
def test_runner_on_a_tiny_slice_writes_every_key(tmp_path):
    wd = str(tmp_path / "ev")
    res = evaluate_checkpoint(
        SFT,
        [PROMPTS, DECLINE],
        reference=PRETRAIN,
        reward_model=REWARD,
        text_path=TEXT,
        max_prompts=16,
        max_new_tokens=8,
        batch_size=16,
        workdir=wd,
    )
    with open(os.path.join(wd, "eval.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(res))
    assert set(saved["sets"]) == {"prompts_test", "decline_test"}
    for name, m in saved["sets"].items():
        assert tuple(m) == SET_METRICS, name
        assert m["num_prompts"] == 16
        missing = {k for k, v in m.items() if v is None}
        unlabelled = {"refusal/rate", "refusal/complete_rate", "refusal/over_rate"}
        assert missing == (unlabelled if name == "prompts_test" else set()), name
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["win_rate"] <= 1 and 0 < m["length/mean"] <= 8
    assert saved["perplexity"]["perplexity"] > 1
    with open(os.path.join(wd, "completions.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    assert len(recs) == 32 and {"completion", "reference_completion", "kl", "reward"} <= set(recs[0])
    md = open(os.path.join(wd, "eval.md")).read()
    assert "| accuracy |" in md and "## Examples" in md
    try:
        import matplotlib  # noqa: F401

        for png in ("eval_rates.png", "eval_lengths.png", "eval_rewards.png", "eval_kl.png"):
            assert os.path.getsize(os.path.join(wd, png)) > 1000
    except ImportError:
        assert "matplotlib is not installed" in md


def run_cli(workdir, *overrides, cli=None):
    """`python -m jaxalign.main --config=configs/eval.py ...`: in this process through the `cli` fixture
    (tests/conftest.py) when given, else as a subprocess."""
    args = [f"--config={os.path.join(ROOT, 'configs', 'eval.py')}", f"--workdir={workdir}", *overrides]
    if cli is not None:
        return cli("jaxalign.main", *args)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "jaxalign.main", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_runs(tmp_path):
    wd = str(tmp_path / "cli")
    r = run_cli(
        wd,
        "--config.eval.max_prompts=16",
        "--config.eval.max_new_tokens=8",
        "--config.eval.batch_size=16",
        "--config.eval.plots=False",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| accuracy |" in r.stdout
    with open(os.path.join(wd, "eval.json")) as f:
        res = json.load(f)
    assert res["sets"]["prompts_test"]["kl/sequence"] == 0.0  # the default reference is itself
    assert res["sets"]["prompts_test"]["win_rate"] == 0.5
    assert os.path.exists(os.path.join(wd, "eval.md"))


def test_cli_bad_field_is_a_named_error(tmp_path, cli):
    wd = tmp_path / "bad"
    r = run_cli(str(wd), "--config.eval.temperature=-1.0", cli=cli)
    assert r.returncode == 2
    assert "config.eval.temperature=-1.0" in r.stderr
    assert not wd.exists()


def _config(**changes):
    c = __import__("configs.eval", fromlist=["get_config"]).get_config()
    with c.unlocked():
        for k, v in changes.items():
            setattr(c.eval, k, v)
    return c


def test_config_loads_locked_and_valid():
    c = _config()
    assert c.is_locked and c.objective == "eval"
    with pytest.raises(AttributeError):
        c.eval.no_such_field = 1
    assert eval_run.validate_config(c, num_devices=8) == (1, 8, 1)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(reward_model=SFT), r"config\.eval\.reward_model=.*causal-LM checkpoint"),
        (dict(batch_size=12), r"config\.eval\.batch_size=12: must be a positive multiple of data × fsdp = 8"),
        (dict(prompts=""), r"config\.eval\.prompts='': is required"),
        (dict(prompts=PROMPTS + ",/nonexistent/p.jsonl"), r"config\.eval\.prompts='/nonexistent/p.jsonl'"),
        (dict(check_fn="jaxalign.data.embedded:no_such_fn"), r"config\.eval\.check_fn=.*no function"),
        (dict(top_p=0.0), r"config\.eval\.top_p=0\.0"),
    ],
)
def test_bad_config_names_its_field(changes, match):
    with pytest.raises(ConfigError, match=match):
        eval_run.validate_config(_config(**changes), num_devices=8)
