"""configs/recipes/: every recipe loads on each of its topologies and validates with that topology's device
and process counts; every shipped config.json parses with ModelConfig.from_hf."""

import glob
import importlib.util
import json
import os

import ml_collections
import pytest

from jaxalign import defaults
from jaxalign.models import ModelConfig
from jaxalign.trainers.validate import validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = os.path.join(ROOT, "configs", "recipes")


def _build():
    spec = importlib.util.spec_from_file_location(
        "jaxalign_recipes_build", os.path.join(RECIPES, "_build.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _build()
FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(RECIPES, "*.py")) if "/_" not in p)
CASES = [
    (f, model, topology)
    for f in FILES
    for model, spec in BUILD.MODELS.items()
    if f.split("_", 1)[1][:-3] == spec["file"]
    for topology in spec["topologies"]
]


def test_every_recipe_file_has_cases():
    assert len(FILES) == 8
    assert sorted({f for f, _, _ in CASES}) == FILES


@pytest.mark.parametrize("name,model,topology", CASES)
def test_recipe_validates_on_its_topology(name, model, topology):
    c = defaults.load_config_file(os.path.join(RECIPES, name), topology)
    assert c.is_locked and c.objective == name.split("_")[0]
    assert (c.model.dtype, c.model.remat, c.model.scan_layers) == ("bfloat16", True, True)
    assert c.model.path.endswith(os.path.join("", BUILD.MODELS[model]["dir"]))
    with open(BUILD.model_config_json(model)) as f:
        hf = json.load(f)
    # No weights here: validate with the shipped shapes as a random init and the embedded tokenizer.
    with c.unlocked():
        c.model.path = ""
        c.model.init = ml_collections.ConfigDict(hf)
        c.model.tokenizer = defaults.asset("tokenizer")
    devices, hosts = BUILD.TOPOLOGIES[topology][:2]
    mesh = validate(c, num_devices=devices, process_count=hosts)
    assert mesh == tuple(BUILD.MODELS[model]["topologies"][topology]["mesh"].values())


def test_default_topology_and_unknown_topology():
    c = defaults.load_config_file(os.path.join(RECIPES, "dpo_llama3_1_8b.py"))
    assert (c.mesh.data, c.mesh.fsdp, c.train.batch_size) == (1, 4, 32)  # v5p-8
    with pytest.raises(ValueError, match="unknown topology 'v5e-8'"):
        defaults.load_config_file(os.path.join(RECIPES, "dpo_llama3_1_8b.py"), "v5e-8")


@pytest.mark.parametrize("model", sorted(BUILD.MODELS))
def test_shipped_config_json_parses(model):
    with open(BUILD.model_config_json(model)) as f:
        hf = json.load(f)
    m = ModelConfig.from_hf(hf)
    assert m.model_type == hf["model_type"]
    assert (m.hidden_size, m.num_layers, m.vocab_size) == (
        hf["hidden_size"],
        hf["num_hidden_layers"],
        hf["vocab_size"],
    )
    assert m.num_heads % m.num_kv_heads == 0


def test_known_shapes():
    """A few published numbers, to catch a mistyped copy."""
    shapes = {
        m: ModelConfig.from_hf(json.load(open(BUILD.model_config_json(m))))
        for m in ("llama-3.1-8b", "qwen2.5-7b", "gemma-2b", "llama-3.2-1b")
    }
    l8, q7, g2, l1 = (shapes[k] for k in ("llama-3.1-8b", "qwen2.5-7b", "gemma-2b", "llama-3.2-1b"))
    assert (l8.intermediate_size, l8.num_kv_heads, l8.rope_type, l8.rope_factor) == (14336, 8, "llama3", 8.0)
    assert (q7.hidden_size, q7.intermediate_size, q7.num_kv_heads, q7.qkv_bias) == (3584, 18944, 4, True)
    assert (g2.head_dim, g2.num_kv_heads, g2.tie_word_embeddings, g2.embed_scale) == (256, 1, True, True)
    assert (l1.head_dim, l1.tie_word_embeddings, l1.rope_factor) == (64, True, 32.0)
