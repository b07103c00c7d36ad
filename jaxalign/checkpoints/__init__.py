"""Checkpoint I/O: Hugging Face safetensors directories and tokenizers."""

from jaxalign.checkpoints.hf import load_hf_model, save_hf_model
from jaxalign.checkpoints.tokenizer import load_tokenizer

__all__ = ["load_hf_model", "save_hf_model", "load_tokenizer"]
