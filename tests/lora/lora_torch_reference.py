"""A tiny seeded random Llama in torch (float32, eager) and PEFT LoRA wrappers of it, for comparisons.

Weights are re-drawn with std 0.15 (HF's 0.02 makes every logit ~0 and would hide mismatches).
"""

from __future__ import annotations

import atexit
import copy
import functools
import shutil
import tempfile

import numpy as np
import peft
import torch
import transformers

TOL = 1e-4  # max |logit difference| in float32
HF_CONFIG = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)
_TMP = tempfile.mkdtemp(prefix="jaxalign_lora_")
atexit.register(shutil.rmtree, _TMP, True)


def tmp_dir(name: str) -> str:
    return f"{_TMP}/{name}"


@functools.lru_cache(maxsize=None)
def tiny_llama():
    """(HF directory, torch LlamaForCausalLM in eval mode); build once per session."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF_CONFIG)).float().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.15 * noise)
    path = tmp_dir("base")
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def peft_model(
    targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    r: int = 4,
    alpha: float = 8.0,
    use_rslora: bool = False,
    seed: int = 2,
):
    """A PEFT LoRA model on a copy of the tiny Llama with random (nonzero) A and B."""
    _, base = tiny_llama()
    cfg = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(targets),
        use_rslora=use_rslora,
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(copy.deepcopy(base), cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    """ids [B, T] (no padding) -> logits [B, T, V]."""
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()


def token_batch(b: int = 2, t: int = 10, vocab: int = 128, seed: int = 0):
    """Unpadded rows: (input_ids, positions, segment_ids) each [B, T] int32."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(b, t)).astype(np.int32)
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    return ids, pos, np.ones((b, t), np.int32)


def perturb(tree, scale: float = 0.1, seed: int = 1):
    """tree + scale · N(0, 1) noise drawn with numpy (B != 0 so adapters matter); float32 jnp arrays."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape), jnp.float32), tree
    )


def random_params(config, std: float = 0.15, seed: int = 0):
    """Base parameters for `config` drawn with numpy (jax.random init compiles slowly on a busy CPU):
    norm scales 1 + 0.1·N(0, 1), everything else std·N(0, 1)."""
    import flax
    import jax
    import jax.numpy as jnp
    from jaxalign.models import init_params

    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    flat = flax.traverse_util.flatten_dict(shapes)
    out = {
        k: jnp.asarray(
            (1.0 + 0.1 * rng.standard_normal(s.shape))
            if k[-1] == "scale"
            else std * rng.standard_normal(s.shape),
            jnp.float32,
        )
        for k, s in flat.items()
    }
    return flax.traverse_util.unflatten_dict(out)
