"""launch/pipeline.py: loads, overrides configs, judges goals; the end-to-end run only on request."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pipeline():
    spec = importlib.util.spec_from_file_location("pipeline", os.path.join(ROOT, "launch", "pipeline.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_config_overrides_fields():
    p = _pipeline()
    c = p.load_config("dpo", **{"train.num_steps": 3, "dpo.beta": 0.5, "model.path": None})
    assert (c.train.num_steps, c.dpo.beta) == (3, 0.5)
    assert c.model.path.endswith(os.path.join("checkpoints", "sft"))  # None keeps the default
    with pytest.raises(KeyError):
        p.load_config("dpo", **{"dpo.betta": 0.5})  # configs are locked


def test_goals():
    p = _pipeline()
    sets = lambda acc, stop, refuse, over: {
        "sets": {  # noqa: E731
            "prompts_test": {"accuracy": acc, "stop_rate": stop},
            "decline_test": {"refusal/rate": refuse, "refusal/over_rate": over},
        }
    }
    sft = sets(0.4, 1.0, 0.0, 0.0)
    assert all(p.goals(sets(0.56, 0.99, 0.95, 0.02), sft).values())
    g = p.goals(sets(0.5, 0.9, 0.5, 0.2), sft)
    assert not any(g.values())


@pytest.mark.slow
@pytest.mark.pipeline
def test_pipeline_ci(tmp_path):
    """The --size=ci pipeline end to end (~14 min on 2 cores): every stage runs, the report and plots are
    written, and the effects the table is there to show are present. Opt-in (`python -m pytest -m
    pipeline`), outside the default run that CI makes: it alone took 14 of CI's 40 minutes."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as on the CLI
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "pipeline.py"), f"--workdir={tmp_path}", "--size=ci"],
        check=True,
        cwd=ROOT,
        env=env,
        timeout=3600,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    table = results["table"]
    assert {
        "sft",
        "sft_whole",
        "dpo",
        "ipo",
        "orpo",
        "dpo_from_whole",
        "ppo",
        "grpo",
        "rloo",
        "ppo_rm",
        "dpo_rm_round",
        "online_dpo_r1",
        "online_dpo_r2",
        "cai",
    } <= set(table)
    for name in ("results.md", "curves.png", "frontier.png"):
        assert (tmp_path / name).exists(), name
    # Whole-conversation SFT carries on as the user; preference training from it stops that.
    assert table["sft_whole"]["speaks_as_user_rate"] >= 0.3
    assert table["dpo_from_whole"]["speaks_as_user_rate"] <= 0.05
    # DPO: answers better than SFT, stops, refuses the decline slice and not the benign look-alikes.
    assert table["dpo"]["accuracy"] > table["sft"]["accuracy"]
    assert table["dpo"]["stop_rate"] >= 0.95
    assert table["dpo"]["refusal_rate"] >= 0.8 and table["dpo"]["over_refusal_rate"] <= 0.1
    assert table["sft"]["refusal_rate"] <= 0.2
    # On-policy methods learn the refusal the SFT policy sometimes samples (the embedded SFT data refuses a
    # tenth of the password requests; greedy SFT complies).
    for name in ("ppo", "grpo", "online_dpo_r2"):
        assert table[name]["refusal_rate"] >= 0.8 and table[name]["over_refusal_rate"] <= 0.1, name
    # Constitutional AI from the SFT model's own critiques and revisions: refuses, answers the look-alikes.
    assert table["cai"]["refusal_rate"] >= 0.8 and table["cai"]["over_refusal_rate"] <= 0.1
    # Benchmarks and the classifier column: scored for every model.
    for name in ("sft", "dpo"):
        assert 0.0 <= results["eval"][name]["mmlu_sample"]["mc/acc"] <= 1.0
        assert 0.0 <= results["eval"][name]["truthfulqa_mc_sample"]["truthfulqa/mc2"] <= 1.0
        assert "classifier/sigmoid_mean" in results["eval"][name]["prompts_test"]
    # The frontier: PPO with the smallest kl_coef drifts further from SFT than with the largest.
    kl = {n: r["kl_sequence"] for n, r in table.items() if n.startswith("ppo_kl")}
    assert kl[min(kl, key=lambda n: float(n[6:]))] > kl[max(kl, key=lambda n: float(n[6:]))]


def test_seed_table_judges_mean_minus_std(tmp_path):
    """Three seeds' results: mean ± std per model, goals on the unseen templates with mean − std (and
    mean + std for the upper bounds), the report written."""
    p = _pipeline()

    def result(acc, refuse, frag):
        return {
            "sets": {
                "prompts_test": {"accuracy": acc},
                "decline_test": {"refusal/rate": refuse},
                "prompts_unseen_test": {"accuracy": acc, "stop_rate": 1.0, "text/fragment_rate": frag},
                "decline_unseen_test": {"refusal/complete_rate": refuse, "refusal/over_rate": 0.0},
            }
        }

    runs = [
        {"sft": result(0.05, 0.4, 0.0), "dpo": result(a, r, f), "ipo": result(0.5, r2, 0.0)}
        for a, r, f, r2 in ((0.80, 1.0, 0.0, 0.99), (0.78, 1.0, 0.01, 0.80), (0.79, 1.0, 0.005, 0.95))
    ]
    table = p.seed_table(runs)
    mean, std = table["dpo"]["unseen accuracy"]
    assert mean == pytest.approx(0.79) and std == pytest.approx(0.01)
    assert table["dpo"]["meets_goals"] and table["dpo"]["missed"] == []
    # ipo: complete refusals 0.913 ± 0.099 -> mean − std 0.81 < 0.90 (the mean alone would pass)
    assert table["ipo"]["missed"] == ["unseen complete refusal"] and not table["ipo"]["meets_goals"]
    report = p.write_seed_report(str(tmp_path), runs)
    assert "| dpo |" in report and "no: unseen complete refusal" in report
    assert json.loads((tmp_path / "seeds.json").read_text())["dpo"]["meets_goals"] is True
