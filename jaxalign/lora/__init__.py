"""LoRA: low-rank adapters on a frozen base, in Hugging Face PEFT format.

from jaxalign import lora
cfg = lora.LoraConfig(rank=8, alpha=16, target_modules=lora.ALL_PROJECTIONS)
adapters = lora.init_lora(model, base_params, cfg, rng)            # the only trainable tree
logits = lora.apply_lora(model, base_params, adapters, ids, pos, seg, lora_config=cfg)
ref_logits = lora.apply_lora(model, base_params, None, ids, pos, seg)  # adapters off = reference
lora.save_peft_adapter("out/adapter", adapters, cfg, model_config)    # PeftModel.from_pretrained
params = lora.merge_lora(base_params, adapters, cfg)                  # plain HF export

Bottleneck adapters (Houlsby et al. 2019; nonlinear, saved as their own file): jaxalign.lora.bottleneck.
"""

from jaxalign.lora.adapters import (
    LoraModel,
    apply_lora,
    attach_lora,
    dense_sites,
    init_lora,
    lora_logical_axes,
    lora_loss_fn,
    lora_shardings,
    merge_lora,
    select_modules_to_save,
    select_targets,
)
from jaxalign.lora.bottleneck import (
    BottleneckConfig,
    BottleneckModel,
    apply_bottleneck,
    bottleneck_loss_fn,
    bottleneck_shardings,
    init_bottleneck,
    load_bottleneck_adapter,
    save_bottleneck_adapter,
)
from jaxalign.lora.config import ALL_PROJECTIONS, ATTENTION_MODULES, MLP_MODULES, LoraConfig
from jaxalign.lora.peft_format import load_peft_adapter, save_peft_adapter

__all__ = [
    "LoraConfig",
    "ALL_PROJECTIONS",
    "ATTENTION_MODULES",
    "MLP_MODULES",
    "init_lora",
    "apply_lora",
    "attach_lora",
    "LoraModel",
    "lora_loss_fn",
    "merge_lora",
    "lora_logical_axes",
    "lora_shardings",
    "dense_sites",
    "select_targets",
    "select_modules_to_save",
    "save_peft_adapter",
    "load_peft_adapter",
    "BottleneckConfig",
    "BottleneckModel",
    "init_bottleneck",
    "apply_bottleneck",
    "bottleneck_loss_fn",
    "bottleneck_shardings",
    "save_bottleneck_adapter",
    "load_bottleneck_adapter",
]
