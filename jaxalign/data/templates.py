"""Tokenizing examples: chat templates from the tokenizer, and per-token loss masks.

Every function returns token ids with a same-length 0/1 ``mask`` saying which tokens are *targets*
(trained on). Shifting to (input, target) pairs happens later, in `batching`.

What is a target:
  * conversations (``messages``): with ``assistant_only_loss=True`` (the SFT default) only the assistant
    turns, each including the end-of-turn token that closes it (``<|eos|>`` / ``<|im_end|>`` ...), so the
    model learns to stop; system/user turns and the template's role headers are masked.
    ``assistant_only_loss=False`` trains on the whole conversation, user turns included.
  * prompt/completion (SFT, preference, KTO): the prompt is masked, the completion is a target. With chat
    messages the prompt is rendered with ``add_generation_prompt=True`` and the completion is what the
    full conversation adds after it. With plain strings: ``tokenizer(prompt)`` (the tokenizer's own
    special tokens, e.g. BOS) + ``tokenizer(completion)`` + EOS.
  * plain text (CLM): ``tokenizer(text)`` + EOS, all targets.

How the assistant mask is found:
  * when the template marks assistant content with ``{% generation %}...{% endgeneration %}``:
    ``apply_chat_template(..., return_assistant_tokens_mask=True)``; an EOS token right after a marked
    span is also marked (templates that close the turn outside the generation block).
  * otherwise prefix by prefix: the tokens of ``messages[:i]`` rendered with the generation prompt, then
    of ``messages[:i+1]``; the tokens in between are assistant turn ``i``. This needs the rendering of a
    prefix to tokenize to a prefix of the whole (true of ordinary templates); a template for which it is
    not raises ValueError.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

_GENERATION = re.compile(r"{%-?\s*generation\s*-?%}")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def has_generation_marks(tokenizer) -> bool:
    """Whether the chat template marks assistant content with {% generation %}."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return bool(template) and bool(_GENERATION.search(template))


NO_TEMPLATE = (
    "conversational rows (lists of messages) need a chat template and the tokenizer has none "
    "(tokenizer.chat_template is empty); set config.data.chat_template to a Jinja template file "
    "(or its text), or config.model.tokenizer to a tokenizer that has one"
)


def _apply_template(tokenizer, messages, **kwargs):
    """``tokenizer.apply_chat_template`` with the template's own errors (a Jinja ``raise_exception``, e.g.
    for a role it does not know) turned into a ValueError that says what to change."""
    if not has_chat_template(tokenizer):
        raise ValueError(NO_TEMPLATE)
    import jinja2

    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except jinja2.TemplateError as e:
        roles = ", ".join(dict.fromkeys(m["role"] for m in messages))
        raise ValueError(
            f"the tokenizer's chat template rejects this conversation (roles: {roles}): {e}; "
            "expected a conversation the template accepts, or set config.data.chat_template to "
            "a template that renders these roles"
        ) from None


def render(tokenizer, messages, add_generation_prompt=False, tools=None) -> str:
    """A conversation through the tokenizer's chat template, as text (`tools`: function schemas)."""
    kwargs = {"tools": tools} if tools else {}
    return _apply_template(
        tokenizer, messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )


def _ids(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set one (completions end with EOS)")
    return int(tokenizer.eos_token_id)


def encode_text(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Plain text (CLM): ``tokenizer(text) + [EOS]``, every token a target. Returns (ids, mask) [L]."""
    ids = _ids(tokenizer, text, True) + [_eos_id(tokenizer)]
    return np.asarray(ids, np.int32), np.ones(len(ids), np.int32)


def encode_messages(
    tokenizer, messages: list[dict], assistant_only_loss: bool = True, tools: list[dict] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A conversation through the chat template (`tools`: function schemas, passed on as `tools=`).
    Returns (ids [L] int32, mask [L] int32); tool turns, like user turns, are not targets."""
    if not assistant_only_loss:
        ids = _ids(tokenizer, render(tokenizer, messages, tools=tools), False)
        return np.asarray(ids, np.int32), np.ones(len(ids), np.int32)
    if has_generation_marks(tokenizer):
        out = _apply_template(
            tokenizer,
            messages,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            **({"tools": tools} if tools else {}),
        )
        ids = np.asarray(out["input_ids"], np.int32)
        mask = np.asarray(out["assistant_masks"], np.int32)
        eos = tokenizer.eos_token_id
        if eos is not None:  # the EOS that closes a marked turn is a target too
            after = np.zeros_like(mask)
            after[1:] = (mask[:-1] == 1) & (mask[1:] == 0) & (ids[1:] == eos)
            mask = mask | after
        return ids, mask
    full = _ids(tokenizer, render(tokenizer, messages, tools=tools), False)
    mask = np.zeros(len(full), np.int32)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        start = len(_ids(tokenizer, prefix, False))
        upto = _ids(tokenizer, render(tokenizer, messages[: i + 1], tools=tools), False)
        if full[: len(upto)] != upto:
            raise ValueError(
                "the chat template does not render a conversation prefix as a prefix of the "
                "whole; cannot find assistant turns (add {% generation %} marks to it)"
            )
        mask[start : len(upto)] = 1
    return np.asarray(full, np.int32), mask


def encode_prompt(tokenizer, prompt: str | list[dict]) -> np.ndarray:
    """Prompt tokens: chat messages with the generation prompt, or ``tokenizer(prompt)``. [P] int32."""
    if isinstance(prompt, str):
        return np.asarray(_ids(tokenizer, prompt, True), np.int32)
    return np.asarray(_ids(tokenizer, render(tokenizer, prompt, add_generation_prompt=True), False), np.int32)


def encode_prompt_completion(
    tokenizer, prompt: str | list[dict], completion: str | list[dict]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (prompt_ids [P], completion_ids [C], completion_mask [C]); the prompt is never a target.

    With messages the completion's mask comes from `encode_messages` (assistant turns + their end token;
    a non-assistant turn inside the completion stays masked). With strings the completion ends with EOS.
    """
    if isinstance(prompt, str) != isinstance(completion, str):
        raise ValueError("prompt and completion mix plain text and messages")
    if isinstance(completion, str):
        p = _ids(tokenizer, prompt, True)
        c = _ids(tokenizer, completion, False) + [_eos_id(tokenizer)]
        return np.asarray(p, np.int32), np.asarray(c, np.int32), np.ones(len(c), np.int32)
    p = encode_prompt(tokenizer, prompt)
    ids, mask = encode_messages(tokenizer, list(prompt) + list(completion), assistant_only_loss=True)
    if len(ids) < len(p) or not np.array_equal(ids[: len(p)], p):
        raise ValueError(
            "the chat template renders the prompt with its generation prompt differently "
            "from the start of the full conversation"
        )
    return p, ids[len(p) :], mask[len(p) :]


def encode_example(
    tokenizer, example: dict[str, Any], assistant_only_loss: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One CLM/SFT example (normalized by `formats`) as (ids, mask) over the whole sequence."""
    if "text" in example:
        return encode_text(tokenizer, example["text"])
    if "messages" in example:
        return encode_messages(tokenizer, example["messages"], assistant_only_loss, example.get("tools"))
    p, c, cm = encode_prompt_completion(tokenizer, example["prompt"], example["completion"])
    pm = np.full(len(p), 0 if assistant_only_loss else 1, np.int32)
    return np.concatenate([p, c]), np.concatenate([pm, cm])
