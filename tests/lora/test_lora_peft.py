"""PEFT interop: PEFT-trained adapters load into jaxalign, jaxalign adapters load into PEFT (same logits),
for Llama causal LMs, scalar-head (SEQ_CLS) reward models and GPT-2's fused c_attn."""

import copy
import functools
import json

import jax
import numpy as np
import peft
import pytest

from jaxalign.errors import CheckpointError
import torch
import transformers
from lora_torch_reference import TOL, peft_model, perturb, tiny_llama, tmp_dir, token_batch, torch_logits

from jaxalign import lora
from jaxalign.checkpoints.hf import load_hf_model
from jaxalign.models import ScalarHeadModel, Transformer
from jaxalign.models.heads import last_token_scores


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
    with pytest.raises(CheckpointError, match="use_dora"):
        lora.load_peft_adapter(tmp_path, params, config)


def _fresh(model):
    return copy.deepcopy(model)


# --------------------------------------------------------------------------- scalar heads (SEQ_CLS)
def _scores(config, params, adapters, lora_cfg, ids, pos, seg):
    """Our reward: the score at each row's last token, [B]."""

    def f(p, a):
        scores = lora.apply_lora(ScalarHeadModel(config), p, a, ids, pos, seg, lora_config=lora_cfg)
        return last_token_scores(scores, seg)

    return np.asarray(jax.jit(f)(params, adapters))


def _torch_scores(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long)).logits[:, 0].numpy()


def test_reward_model_adapter_loads_in_peft_as_sequence_classification():
    """A LoRA reward model (adapters + the score head trained in full) saves as a SEQ_CLS adapter that
    PeftModel puts on AutoModelForSequenceClassification of the base directory: same scores. The base
    directory is a causal LM, so transformers' own score head is random: only the saved one can match."""
    path, _ = tiny_llama()
    config, params = load_hf_model(path, head="score")
    cfg = lora.LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "down_proj"))
    adapters = lora.init_lora(ScalarHeadModel(config), params, cfg, jax.random.key(0))
    np.testing.assert_array_equal(adapters["score"]["kernel"], params["score"]["kernel"])
    adapters = perturb(adapters, seed=5)
    out = tmp_dir("reward")
    lora.save_peft_adapter(out, adapters, cfg, config, base_model_name_or_path=path)
    saved = json.load(open(f"{out}/adapter_config.json"))
    assert (saved["task_type"], saved["modules_to_save"]) == ("SEQ_CLS", ["score"])
    base = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    pm = peft.PeftModel.from_pretrained(base, out).eval()
    ids, pos, seg = token_batch(seed=6)
    ours = _scores(config, params, adapters, cfg, ids, pos, seg)
    np.testing.assert_allclose(ours, _torch_scores(pm, ids), atol=TOL, rtol=0)
    # The score head matters: with the base's head the scores are far off.
    no_head = {k: v for k, v in adapters.items() if k != "score"}
    assert np.abs(_scores(config, params, no_head, cfg, ids, pos, seg) - ours).max() > 100 * TOL
    # Back into jaxalign: the same tree, modules_to_save the default (the score head).
    again, cfg2 = lora.load_peft_adapter(out, params, config)
    assert cfg2.modules_to_save is None and set(cfg2.target_modules) == set(cfg.target_modules)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), again, adapters)
    with pytest.raises(ValueError, match="SEQ_CLS"):
        lora.load_peft_adapter(out, load_hf_model(path)[1], config)


def test_peft_seq_cls_adapter_loads_with_peft_scores():
    """PEFT's own SEQ_CLS LoRA (get_peft_model on a *ForSequenceClassification, score in
    modules_to_save), trained weights simulated by noise, loads onto a scan_layers scalar-head base."""
    path, _ = tiny_llama()
    base = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    pm = peft.get_peft_model(
        base, peft.LoraConfig(r=2, lora_alpha=6, target_modules=["k_proj", "up_proj"], task_type="SEQ_CLS")
    )
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if p.requires_grad:  # lora_A / lora_B and the score copy
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    pm.eval()
    out = tmp_dir("peft_reward")
    pm.save_pretrained(out)
    config, params = load_hf_model(path, head="score", scan_layers=True)
    adapters, cfg = lora.load_peft_adapter(out, params, config)
    assert cfg.modules_to_save is None and adapters["score"]["kernel"].shape == (64, 1)
    ids, pos, seg = token_batch(seed=8)
    ours = _scores(config, params, adapters, cfg, ids, pos, seg)
    np.testing.assert_allclose(ours, _torch_scores(pm, ids), atol=TOL, rtol=0)


# ------------------------------------------------------------------------------ GPT-2 fused c_attn
@functools.lru_cache(maxsize=None)
def _tiny_gpt2():
    """(HF directory, torch GPT2LMHeadModel) with weights ~ 0.15·N(0, 1) (layer norms 1 + 0.1·N)."""
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
    )
    model = transformers.GPT2LMHeadModel(hf_cfg).float().eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if "ln_" in name and name.endswith("weight") else 0.15 * noise)
    path = tmp_dir("gpt2")
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def test_gpt2_adapters_save_as_one_fused_c_attn_adapter():
    """Separate q and v adapters (rank 2 each) become one c_attn adapter of rank 4 (A side by side, B
    block-diagonal with k's block zero), written with rank_pattern / alpha_pattern so PEFT's scale is
    ours; attention c_proj without the MLP's c_proj needs a regex. PEFT's GPT-2 gives our logits, and
    the files load back as the very tree they came from."""
    path, base_torch = _tiny_gpt2()
    config, params = load_hf_model(path)
    cfg = lora.LoraConfig(rank=2, alpha=3.0, target_modules=("q_proj", "v_proj", "o_proj", "up_proj"))
    adapters = perturb(lora.init_lora(Transformer(config), params, cfg, jax.random.key(0)), 0.2, seed=9)
    out = tmp_dir("gpt2_ours")
    lora.save_peft_adapter(out, adapters, cfg, config)
    saved = json.load(open(f"{out}/adapter_config.json"))
    assert saved["rank_pattern"] == {"c_attn": 4} and saved["alpha_pattern"] == {"c_attn": 6.0}
    assert saved["fan_in_fan_out"] and isinstance(saved["target_modules"], str)
    pm = peft.PeftModel.from_pretrained(_fresh(base_torch), out).eval()
    assert pm.base_model.model.transformer.h[0].attn.c_attn.lora_A["default"].weight.shape == (4, 64)
    ids, pos, seg = token_batch(seed=10)
    ours = _ours(config, params, adapters, cfg, ids, pos, seg)
    assert np.abs(ours - torch_logits(pm, ids)).max() <= TOL
    again, cfg2 = lora.load_peft_adapter(out, params, config)
    assert set(cfg2.target_modules) == set(cfg.target_modules) and cfg2.rank == 2
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), again, adapters)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_peft_gpt2_adapter_loads_with_peft_logits(scan_layers):
    """PEFT LoRA on c_attn (q, k, v share its A), c_proj and c_fc, with a rank/alpha pattern on c_fc
    and rsLoRA: q, k and v each get A and their third of B; the pattern's scale folds into B."""
    path, base_torch = _tiny_gpt2()
    peft_cfg = peft.LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["c_attn", "c_proj", "c_fc"],
        rank_pattern={"c_fc": 3},
        alpha_pattern={"c_fc": 5},
        use_rslora=True,
        task_type="CAUSAL_LM",
    )
    pm = peft.get_peft_model(_fresh(base_torch), peft_cfg)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    pm.eval()
    out = tmp_dir(f"gpt2_peft_{scan_layers}")
    pm.save_pretrained(out)
    config, params = load_hf_model(path, scan_layers=scan_layers)
    adapters, cfg = lora.load_peft_adapter(out, params, config)
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}
    q = adapters["layers" if scan_layers else "layers_0"]["attn"]["q_proj"]["lora_a"]
    assert q.shape[-2:] == (64, 2)
    ids, pos, seg = token_batch(seed=12)
    ours = _ours(config, params, adapters, cfg, ids, pos, seg)
    ref = torch_logits(pm, ids)
    assert np.abs(ours - ref).max() <= TOL
    assert np.abs(_ours(config, params, None, None, ids, pos, seg) - ref).max() > 100 * TOL
