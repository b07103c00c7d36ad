"""Tokenizers from local HF directories (tokenizer.json or sentencepiece), never remote code."""
from __future__ import annotations

import os


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False, **kwargs):
    """`transformers.AutoTokenizer.from_pretrained(path)` for a local directory.

    `trust_remote_code` stays False unless a caller explicitly asks for it.
    """
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kwargs)
