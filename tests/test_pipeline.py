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
  assert c.model.path.endswith(os.path.join("checkpoints", "sft"))   # None keeps the default
  with pytest.raises(KeyError):
    p.load_config("dpo", **{"dpo.betta": 0.5})                         # configs are locked


def test_goals():
  p = _pipeline()
  sets = lambda acc, stop, refuse, over: {"sets": {  # noqa: E731
      "prompts_test": {"accuracy": acc, "stop_rate": stop},
      "decline_test": {"refusal/rate": refuse, "refusal/over_rate": over}}}
  sft = sets(0.4, 1.0, 0.0, 0.0)
  assert all(p.goals(sets(0.56, 0.99, 0.95, 0.02), sft).values())
  g = p.goals(sets(0.5, 0.9, 0.5, 0.2), sft)
  assert not any(g.values())


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("JAXALIGN_PIPELINE_TEST") != "1",
                    reason="the --size=ci pipeline takes ~10 min on 2 cores: set JAXALIGN_PIPELINE_TEST=1")
def test_pipeline_ci(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one CPU device, as on the CLI
  subprocess.run([sys.executable, os.path.join(ROOT, "launch", "pipeline.py"), f"--workdir={tmp_path}",
                  "--size=ci"], check=True, cwd=ROOT, env=env, timeout=3600)
  results = json.loads((tmp_path / "results.json").read_text())
  assert {"sft", "sft_whole", "dpo", "ipo", "orpo", "dpo_rm_round"} <= set(results["table"])
  assert (tmp_path / "results.md").exists() and (tmp_path / "curves.png").exists()
  assert results["table"]["dpo"]["stop_rate"] >= 0.9
