"""HF checkpoints: export -> transformers load -> same logits; reward models both ways; sharded
index files; tokenizers; clear refusals (pickle, unknown model types)."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from hf_reference import TOL, jax_forward, padded_batch, tiny_hf_model, torch_logits  # noqa: E402

from jaxalign.checkpoints import load_hf_model, load_tokenizer, save_hf_model  # noqa: E402
from jaxalign.models import ModelConfig, ScalarHeadModel, last_token_scores  # noqa: E402


def _torch_padded_logits(model, ids, pos, seg):
    with torch.no_grad():
        return model(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(seg != 0, dtype=torch.long),
            position_ids=torch.as_tensor(pos, dtype=torch.long),
        ).logits.numpy()


@pytest.mark.parametrize(
    "family,scan",
    [
        ("llama3", False),
        ("qwen3", True),
        ("gpt2", False),
        ("gemma", False),
        ("qwen2", True),
        ("gemma2", False),
        ("gemma3", False),
    ],
)
def test_export_loads_in_transformers_with_same_logits(tmp_path, family, scan):
    path, _ = tiny_hf_model(family)
    config, params = load_hf_model(path, scan_layers=scan)
    save_hf_model(tmp_path, config, params)
    assert {"config.json", "generation_config.json", "model.safetensors"} <= {
        p.name for p in tmp_path.iterdir()
    }
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    reloaded.eval()
    rows, ids, pos, seg, slices = padded_batch(vocab=config.vocab_size)
    ours = np.asarray(jax_forward(config, params, ids, pos, seg))
    for i, (row, sl) in enumerate(zip(rows, slices)):
        assert np.abs(ours[i, sl] - torch_logits(reloaded, row)).max() <= TOL
    # And back again: our loader reads our own export identically.
    config2, params2 = load_hf_model(tmp_path, scan_layers=scan)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def _reward_batch(vocab):
    return padded_batch(((9, "left"), (5, "left"), (7, "right"), (9, "right")), total=9, vocab=vocab, seed=3)


def test_reward_model_from_transformers_matches(tmp_path):
    path, torch_model = tiny_hf_model("llama3", head="score")
    config, params = load_hf_model(path, head="score")
    assert params["score"]["kernel"].shape == (config.hidden_size, 1)
    rows, ids, pos, seg, _ = _reward_batch(config.vocab_size)
    scores = ScalarHeadModel(config).apply({"params": params}, ids, pos, seg)  # [B, T]
    ours = np.asarray(last_token_scores(scores, seg))
    ref = np.array([torch_logits(torch_model, r)[0] for r in rows])  # pooled [B, 1]
    np.testing.assert_allclose(ours, ref, atol=TOL)

    # Export as a *ForSequenceClassification checkpoint; transformers pools at the last non-pad token.
    save_hf_model(tmp_path, config, params, head="score")
    hf_config = json.loads((tmp_path / "config.json").read_text())
    assert hf_config["architectures"] == ["LlamaForSequenceClassification"]
    assert hf_config["num_labels"] == 1 and hf_config["pad_token_id"] == 0
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, attn_implementation="eager"
    )
    reloaded.eval()
    np.testing.assert_allclose(_torch_padded_logits(reloaded, ids, pos, seg)[:, 0], ours, atol=TOL)


def test_score_head_from_causal_lm_checkpoint_is_initialised():
    path, _ = tiny_hf_model("gpt2")
    config, params = load_hf_model(path, head="score")
    assert "lm_head" not in params["transformer"]
    kernel = np.asarray(params["score"]["kernel"])
    assert kernel.shape == (config.hidden_size, 1) and 0 < kernel.std() < 0.1


def test_sharded_safetensors_index_roundtrip(tmp_path):
    path, _ = tiny_hf_model("mistral")
    config, params = load_hf_model(path)
    save_hf_model(tmp_path, config, params, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (tmp_path / "model.safetensors").exists()
    _, params2 = load_hf_model(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, params2, params)
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path)  # transformers reads the index too


def test_bfloat16_params_load_and_export(tmp_path):
    path, _ = tiny_hf_model("qwen2")
    config, params = load_hf_model(path, dtype="bfloat16", param_dtype="bfloat16")
    assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(params))
    save_hf_model(tmp_path, config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert next(reloaded.parameters()).dtype == torch.bfloat16


def test_tokenizer_saved_with_model_and_loaded(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        ["hello world", "the quick brown fox", "jumps over the lazy dog"] * 5,
        trainers.BpeTrainer(vocab_size=60, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]),
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    config = ModelConfig(
        model_type="llama",
        vocab_size=64,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        intermediate_size=32,
        eos_token_id=2,
    )
    from jaxalign.models import init_params

    save_hf_model(tmp_path, config, init_params(config, jax.random.key(0)), tokenizer=fast)
    loaded = load_tokenizer(tmp_path)
    assert loaded("the quick fox")["input_ids"] == fast("the quick fox")["input_ids"]
    assert loaded.pad_token == "<pad>"


def test_refuses_pickle_and_unknown_models(tmp_path):
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not today")
    with pytest.raises(ValueError, match="safetensors only"):
        load_hf_model(tmp_path / "pickled")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="supported model types: llama, mistral"):
        load_hf_model(tmp_path / "bert")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForTokenClassification"]})
    )
    with pytest.raises(ValueError, match="LlamaForTokenClassification"):
        load_hf_model(tmp_path / "tok")
