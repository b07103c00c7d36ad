"""Tokenizers from local HF directories (tokenizer.json or sentencepiece), never remote code."""

from __future__ import annotations

import os
from pathlib import Path

from jaxalign.errors import CheckpointError, is_local_path


def check_tokenizer_dir(path: str | os.PathLike) -> None:
    """Cheap checks before transformers is imported: the directory exists, holds tokenizer files, and its
    JSON files parse. Raises CheckpointError naming the path (a hub name is let through)."""
    local = os.path.expanduser(str(path))
    if not os.path.exists(local) and is_local_path(str(path)):
        raise CheckpointError(
            f"{path}: no such directory; expected a tokenizer directory (tokenizer.json, "
            "tokenizer_config.json)"
        )
    if os.path.exists(local) and not os.path.isdir(local):
        raise CheckpointError(
            f"{path}: not a directory; expected a tokenizer directory (tokenizer.json, tokenizer_config.json)"
        )
    if os.path.isdir(local) and not any(
        os.path.exists(os.path.join(local, f))
        for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    ):
        raise CheckpointError(
            f"{path}: no tokenizer files (tokenizer.json, tokenizer_config.json, "
            "tokenizer.model or vocab.json)"
        )
    from jaxalign.checkpoints.hf import _read_json

    for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):  # transformers reads them:
        if os.path.isfile(os.path.join(local, name)):  # name the bad line first
            _read_json(Path(local) / name)


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (offline mode, or no connection to its host within
    `timeout` seconds), or None when it can: asked once before a download, so that an offline machine
    gets one line instead of minutes of retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        return f"no connection to {host}: {e.strerror or type(e).__name__}"
    return None


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False, **kwargs):
    """`transformers.AutoTokenizer.from_pretrained(path)` for a local directory.

    `trust_remote_code` stays False unless a caller explicitly asks for it. A directory that is missing,
    holds no tokenizer files, or whose files do not load raises `CheckpointError` naming it.
    """
    check_tokenizer_dir(path)
    from transformers import AutoTokenizer  # (imports torch: seconds)

    if not os.path.isdir(os.path.expanduser(str(path))):  # a hub name: the local cache, else the hub
        try:
            return AutoTokenizer.from_pretrained(
                str(path), trust_remote_code=trust_remote_code, local_files_only=True, **kwargs
            )
        except Exception:  # noqa: BLE001 - not cached: the hub, if it can be reached
            why = hub_unreachable()
            if why:
                raise CheckpointError(
                    f"{path}: not a local directory, not in the Hugging Face cache, and the hub cannot be "
                    f"reached ({why}); give a local tokenizer directory"
                ) from None

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kwargs)
    except ImportError:
        raise  # a missing package (sentencepiece, ...): the environment, not the files
    except Exception as e:  # OSError (not found), ValueError, and the tokenizers library's bare Exception
        lines = str(e).strip().splitlines()
        raise CheckpointError(
            f"{path}: cannot load the tokenizer ({type(e).__name__}: {lines[0] if lines else 'no message'})"
        ) from e
