"""PEFT interop: PEFT-trained adapters load into jaxalign, jaxalign adapters load into PEFT (same logits)."""

import copy
import json

import jax
import numpy as np
import peft
import pytest
from lora_torch_reference import TOL, peft_model, perturb, tiny_llama, tmp_dir, token_batch, torch_logits

from jaxalign import lora
from jaxalign.checkpoints.hf import load_hf_model
from jaxalign.models import Transformer


def _ours(config, params, adapters, lora_cfg, ids, pos, seg):
    return np.asarray(
        jax.jit(lambda p, a: lora.apply_lora(Transformer(config), p, a, ids, pos, seg, lora_config=lora_cfg))(
            params, adapters
        )
    )


@pytest.mark.parametrize("scan_layers", [False, True])
def test_peft_adapter_loads_with_peft_logits(scan_layers):
    path, _ = tiny_llama()
    pm = peft_model(targets=("q_proj", "v_proj", "o_proj", "down_proj"), use_rslora=scan_layers)
    adapter_dir = tmp_dir(f"from_peft_{scan_layers}")
    pm.save_pretrained(adapter_dir)
    config, params = load_hf_model(path, scan_layers=scan_layers, remat=scan_layers)
    adapters, lora_cfg = lora.load_peft_adapter(adapter_dir, params, config)
    assert (lora_cfg.rank, lora_cfg.alpha, lora_cfg.use_rslora) == (4, 8.0, scan_layers)
    assert set(lora_cfg.target_modules) == {"q_proj", "v_proj", "o_proj", "down_proj"}
    ids, pos, seg = token_batch()
    ours = _ours(config, params, adapters, lora_cfg, ids, pos, seg)
    ref = torch_logits(pm, ids)
    assert np.abs(ours - ref).max() <= TOL
    # The adapters matter: without them the logits differ by much more than the tolerance.
    base = _ours(config, params, None, None, ids, pos, seg)
    assert np.abs(base - ref).max() > 100 * TOL


def test_our_adapter_loads_in_peft_with_our_logits():
    path, base_torch = tiny_llama()
    config, params = load_hf_model(path)
    cfg = lora.LoraConfig(rank=4, alpha=16.0)  # all seven projections
    adapters = lora.init_lora(Transformer(config), params, cfg, jax.random.key(0))
    adapters = perturb(adapters)
    out = tmp_dir("ours")
    lora.save_peft_adapter(out, adapters, cfg, config, base_model_name_or_path=path)
    saved = json.load(open(f"{out}/adapter_config.json"))
    assert saved["target_modules"] == sorted(lora.ALL_PROJECTIONS) and saved["r"] == 4
    pm = peft.PeftModel.from_pretrained(_fresh(base_torch), out).eval()
    ids, pos, seg = token_batch(seed=3)
    ours = _ours(config, params, adapters, cfg, ids, pos, seg)
    assert np.abs(ours - torch_logits(pm, ids)).max() <= TOL
    # Round trip through the files gives back the same tree.
    again, cfg2 = lora.load_peft_adapter(out, params, config)
    assert cfg2 == lora.LoraConfig(**{**cfg.to_dict(), "target_modules": cfg2.target_modules})
    assert set(cfg2.target_modules) == set(cfg.target_modules)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), again, adapters)


def test_subset_of_layers_round_trips_as_regex():
    path, base_torch = tiny_llama()
    config, params = load_hf_model(path)
    cfg = lora.LoraConfig(rank=2, alpha=2.0, target_modules=("layers_1/attn/k_proj", "re:layers_0/mlp/up_.*"))
    adapters = lora.init_lora(Transformer(config), params, cfg, jax.random.key(0))
    adapters = perturb(adapters, 0.3, seed=2)
    out = tmp_dir("subset")
    lora.save_peft_adapter(out, adapters, cfg, config)
    assert isinstance(json.load(open(f"{out}/adapter_config.json"))["target_modules"], str)
    pm = peft.PeftModel.from_pretrained(_fresh(base_torch), out).eval()
    ids, pos, seg = token_batch(seed=4)
    assert np.abs(_ours(config, params, adapters, cfg, ids, pos, seg) - torch_logits(pm, ids)).max() <= TOL
    _, cfg2 = lora.load_peft_adapter(out, params, config)
    assert set(cfg2.target_modules) == {"layers_1/attn/k_proj", "layers_0/mlp/up_proj"}


def test_unsupported_peft_options_raise(tmp_path):
    path, _ = tiny_llama()
    config, params = load_hf_model(path)
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True})
    )
    with pytest.raises(NotImplementedError, match="use_dora"):
        lora.load_peft_adapter(tmp_path, params, config)


def _fresh(model):
    return copy.deepcopy(model)
