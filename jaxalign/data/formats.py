"""Format adapters: the row layouts users already have (TRL-style) to one normalized example per kind.

Formats (``format="auto"`` picks one from the first row's keys, in this order):

  =====================  ===================================  ==========================================
  format                 row keys                             normalized example
  =====================  ===================================  ==========================================
  preference             prompt, chosen, rejected             {prompt, chosen, rejected}
  preference_implicit    chosen, rejected (full transcripts    the same, prompt extracted (see below)
                         or message lists sharing a prompt)
  kto                    prompt, completion, label (bool)     {prompt, completion, label}
  messages               messages (list of {role, content})   {messages}
  prompt_completion      prompt, completion                   {prompt, completion}
  text                   text                                 {text}
  prompt                 prompt (+ optional answer)           {prompt, answer}
  =====================  ===================================  ==========================================

Every prompt/completion/chosen/rejected is either a string (plain text, no chat template) or a list of
messages (conversational; the tokenizer's chat template renders it); within one row they must agree.

Which formats each dataset `kind` accepts: clm: text · sft: messages, prompt_completion, text ·
preference: preference, preference_implicit · kto: kto · prompt: prompt, messages (the trailing assistant
turn is dropped), prompt_completion, preference (the prompt part), kto.

Implicit prompts (`extract_prompt`), as TRL's ``extract_prompt``: for strings such as Anthropic HH
(``"\\n\\nHuman: ... \\n\\nAssistant: ..."``) the prompt is the longest common prefix of chosen and
rejected, cut just after its last ``Assistant:``; without that marker, the common prefix backed off to a
word boundary. For message lists (UltraFeedback-binarized style) it is the longest common run of
messages, backed off so that it ends on a non-assistant turn.

A bad row raises ``ValueError("<file> line <n>: <what is wrong>")``.
"""
from __future__ import annotations

from typing import Any, Callable

FORMATS = ("preference", "preference_implicit", "kto", "messages", "prompt_completion", "text", "prompt")
KIND_FORMATS = {
    "clm": ("text",),
    "sft": ("messages", "prompt_completion", "text"),
    "preference": ("preference", "preference_implicit"),
    "kto": ("kto",),
    "prompt": ("prompt", "messages", "prompt_completion", "preference", "kto"),
}
ROLES = ("system", "user", "assistant")


def detect_format(row: dict) -> str:
    """The format of `row` from its keys (None values count as missing)."""
    keys = {k for k, v in row.items() if v is not None}
    if {"chosen", "rejected"} <= keys:
        fmt = "preference" if "prompt" in keys else "preference_implicit"
    elif {"completion", "label"} <= keys:
        fmt = "kto"
    elif "messages" in keys:
        fmt = "messages"
    elif {"prompt", "completion"} <= keys:
        fmt = "prompt_completion"
    elif "text" in keys:
        fmt = "text"
    elif "prompt" in keys:
        fmt = "prompt"
    else:
        raise ValueError(f"cannot tell the format from keys {sorted(row)}; expected one of: "
                         "text | messages | prompt+completion | prompt+chosen+rejected | chosen+rejected"
                         " | prompt+completion+label | prompt")
    return fmt


def _is_messages(x: Any) -> bool:
    return isinstance(x, list)


def _check_messages(x: Any, field: str) -> list[dict]:
    if not isinstance(x, list) or not x:
        raise ValueError(f"'{field}' must be a non-empty list of messages, got {type(x).__name__}")
    out = []
    for j, m in enumerate(x):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"'{field}'[{j}] must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"'{field}'[{j}] has role {m['role']!r}; expected one of {ROLES}")
        if not isinstance(m["content"], str):
            raise ValueError(f"'{field}'[{j}] content must be a string, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _get(row: dict, field: str) -> Any:
    value = row.get(field)
    if value is None:
        raise ValueError(f"'{field}' is missing")
    return value


def _text_or_messages(row: dict, field: str, allow_empty: bool = False) -> str | list[dict]:
    value = _get(row, field)
    if isinstance(value, str):
        if not value and not allow_empty:
            raise ValueError(f"'{field}' is empty")
        return value
    return _check_messages(value, field)


def _same_type(row: dict, fields: tuple[str, ...]) -> None:
    kinds = {f: _is_messages(row[f]) for f in fields}
    if len(set(kinds.values())) > 1:
        desc = ", ".join(f"'{f}' is {'messages' if m else 'a string'}" for f, m in kinds.items())
        raise ValueError(f"mixes plain text and messages: {desc}")


def extract_prompt(chosen: str | list[dict], rejected: str | list[dict]) -> tuple[Any, Any, Any]:
    """Splits an implicit-prompt pair into (prompt, chosen completion, rejected completion)."""
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise ValueError("'chosen' and 'rejected' mix plain text and messages")
    if isinstance(chosen, str):
        n = 0
        for a, b in zip(chosen, rejected):
            if a != b:
                break
            n += 1
        common = chosen[:n]
        cut = common.rfind("Assistant:")
        if cut >= 0:
            n = cut + len("Assistant:")
        else:
            while n > 0 and not chosen[n - 1].isspace() and n < len(chosen):
                n -= 1
        if chosen[n:] == rejected[n:]:
            raise ValueError("'chosen' and 'rejected' are identical")
        if n == 0:
            raise ValueError("'chosen' and 'rejected' share no prompt")
        return chosen[:n], chosen[n:], rejected[n:]
    k = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        k += 1
    while k > 0 and chosen[k - 1]["role"] == "assistant":
        k -= 1
    if k == 0:
        raise ValueError("'chosen' and 'rejected' share no prompt turns")
    if chosen[k:] == rejected[k:]:
        raise ValueError("'chosen' and 'rejected' are identical")
    return chosen[:k], chosen[k:], rejected[k:]


def _label(row: dict) -> bool:
    value = _get(row, "label")
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"'label' must be a bool (True = desirable), got {value!r}")


def _normalize(row: dict, fmt: str, kind: str) -> dict:
    if fmt == "text":
        text = _get(row, "text")
        if not isinstance(text, str) or not text:
            raise ValueError("'text' must be a non-empty string")
        return {"text": text}
    if fmt == "messages":
        messages = _check_messages(_get(row, "messages"), "messages")
        if kind == "prompt":
            while messages and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            if not messages:
                raise ValueError("'messages' has no turns before the assistant's")
            return {"prompt": messages, "answer": row.get("answer")}
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("'messages' has no assistant turn")
        return {"messages": messages}
    if fmt == "prompt":
        return {"prompt": _text_or_messages(row, "prompt"), "answer": row.get("answer")}
    if fmt in ("prompt_completion", "kto", "preference") and kind == "prompt":
        return {"prompt": _text_or_messages(row, "prompt"), "answer": row.get("answer")}
    if fmt == "prompt_completion":
        ex = {"prompt": _text_or_messages(row, "prompt", allow_empty=True),
              "completion": _text_or_messages(row, "completion")}
        _same_type(ex, ("prompt", "completion"))
        return ex
    if fmt == "kto":
        ex = {"prompt": _text_or_messages(row, "prompt", allow_empty=True),
              "completion": _text_or_messages(row, "completion")}
        _same_type(ex, ("prompt", "completion"))
        ex["label"] = _label(row)
        return ex
    if fmt == "preference":
        ex = {f: _text_or_messages(row, f, allow_empty=f == "prompt") for f in ("prompt", "chosen", "rejected")}
        _same_type(ex, ("prompt", "chosen", "rejected"))
        return ex
    if fmt == "preference_implicit":
        chosen = _text_or_messages(row, "chosen")
        rejected = _text_or_messages(row, "rejected")
        prompt, chosen, rejected = extract_prompt(chosen, rejected)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    raise ValueError(f"unknown format {fmt!r}; expected 'auto' or one of {FORMATS}")


def make_adapter(kind: str, fmt: str = "auto") -> Callable[[dict, str], dict]:
    """Returns ``adapt(row, where) -> example`` for dataset `kind` and row format `fmt`.

    With ``fmt="auto"`` the format is detected from the keys of the first row adapted and then holds for
    every row (so a later row missing a key is reported as missing). Errors are raised as
    ``ValueError(f"{where}: ...")``.
    """
    if kind not in KIND_FORMATS:
        raise ValueError(f"kind {kind!r}: expected one of {sorted(KIND_FORMATS)}")
    if fmt != "auto" and fmt not in KIND_FORMATS[kind]:
        raise ValueError(f"format {fmt!r} does not fit kind {kind!r}; it accepts {KIND_FORMATS[kind]}")

    resolved = [None if fmt == "auto" else fmt]

    def adapt(row: dict, where: str) -> dict:
        try:
            if not isinstance(row, dict):
                raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
            f = resolved[0]
            if f is None:
                f = detect_format(row)
                if f not in KIND_FORMATS[kind] and kind in ("clm", "kto", "preference"):
                    # One obvious format for the kind: validating against it names the missing key.
                    f = {"clm": "text", "kto": "kto"}.get(
                        kind, "preference" if row.get("prompt") is not None else "preference_implicit")
                if f not in KIND_FORMATS[kind]:
                    expected = {"clm": "'text'", "sft": "'messages', 'prompt'+'completion' or 'text'",
                                "preference": "'chosen' and 'rejected'",
                                "kto": "'prompt', 'completion' and 'label'",
                                "prompt": "'prompt' or 'messages'"}[kind]
                    raise ValueError(f"looks like {f!r} (keys {sorted(row)}) but kind {kind!r} needs "
                                     f"{expected}")
                resolved[0] = f
            return _normalize(row, f, kind)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    return adapt
