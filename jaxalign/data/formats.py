"""Format adapters: the row layouts users already have (TRL-style and others) to one example per kind.

Formats (``format="auto"`` picks, from the first row's keys, the first format in this order that the
dataset kind accepts; it then holds for every row):

  ===================  ========================================  ========================================
  format               row keys                                  normalized example
  ===================  ========================================  ========================================
  preference           prompt, chosen, rejected                  {prompt, chosen, rejected}
  preference_implicit  chosen, rejected (full transcripts or     the same, prompt extracted (see below)
                       message lists sharing a prompt)
  kto                  prompt, completion, label (bool)          {prompt, completion, label}
  messages             messages (list of {role, content})        {messages}
  sharegpt             conversations (list of {from, value})     {messages}
  alpaca               instruction, output (+ input, system)     {prompt, completion} as messages
  prompt_completion    prompt, completion                        {prompt, completion}
  text                 text                                      {text}
  prompt               prompt (+ optional answer)                {prompt, answer}
  ===================  ========================================  ========================================

These cover TRL's standard and conversational dataset types: language modeling (text / messages),
prompt-only, prompt-completion, preference with an explicit or implicit prompt, and unpaired preference
(KTO's prompt/completion/label).

Every prompt/completion/chosen/rejected is either a string (plain text, no chat template) or a list of
messages (conversational; the tokenizer's chat template renders it); within one row they must agree, with
one exception: a string ``prompt`` with ``chosen``/``rejected`` message lists. When the lists repeat the
prompt turns (UltraFeedback-binarized) the shared turns become the prompt, as TRL's
``maybe_extract_prompt``; when they hold only the assistant's answer the string becomes one user turn.

Messages: ``role`` is system, user, assistant or tool and ``content`` a string. Tool use (SFT, TRL's
format): a row's ``tools`` column holds the functions' JSON schemas (a list, or its JSON string); an
assistant turn may carry ``tool_calls`` ([{"type": "function", "function": {"name", "arguments"}}],
arguments an object or its JSON string, each naming a function of ``tools``) and is answered by
``role: tool`` turns; the chat template renders them (``tools=`` to ``apply_chat_template``) and only
assistant turns, calls included, are trained on. ShareGPT's ``{"from",
"value"}`` is accepted in both ``messages`` and ``conversations`` (from: system, human/user,
gpt/assistant/model). Alpaca rows become a user turn (``instruction``, then a blank line and ``input``
when it is not empty), preceded by a system turn when the row has ``system``, and an assistant turn
(``output``).

Which formats each dataset `kind` accepts: clm: text · sft: messages, sharegpt, alpaca,
prompt_completion, text · preference: preference, preference_implicit · kto: kto · prompt: prompt,
messages, sharegpt, alpaca (the trailing assistant turn is dropped), prompt_completion, preference,
preference_implicit (the prompt part), kto.

Implicit prompts (`extract_prompt`), as TRL's ``extract_prompt``: for transcripts such as Anthropic HH
(``"\\n\\nHuman: ... \\n\\nAssistant: ..."``) the prompt is the longest common prefix of chosen and
rejected, cut just after its last ``Assistant:``, and each side's remainder must be one assistant answer
(no ``Human:`` turn: the two sides must share every human turn). Strings without those markers: the common
prefix backed off to a word boundary. For message lists (UltraFeedback-binarized style) it is the longest
common run of messages, backed off so that it ends on a non-assistant turn; what follows must be assistant
turns only.

A bad row raises ``jaxalign.errors.DataError("<file> line <n>: <what is wrong and what was expected>")``.
"""

from __future__ import annotations

import re

from typing import Any, Callable

from jaxalign.data.sources import _type_name
from jaxalign.errors import ConfigError, DataError

FORMATS = (
    "preference",
    "preference_implicit",
    "kto",
    "messages",
    "sharegpt",
    "alpaca",
    "prompt_completion",
    "text",
    "prompt",
)
KIND_FORMATS = {
    "clm": ("text",),
    "sft": ("messages", "sharegpt", "alpaca", "prompt_completion", "text"),
    "preference": ("preference", "preference_implicit"),
    "kto": ("kto", "preference", "preference_implicit"),  # pairs are unpaired (`loading.read`)
    "prompt": (
        "prompt",
        "messages",
        "sharegpt",
        "alpaca",
        "prompt_completion",
        "preference",
        "preference_implicit",
        "kto",
    ),
}
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT-style speaker names -> roles.
SPEAKERS = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
}
# What each format's rows look like, for messages about missing keys.
SHAPES = {
    "preference": "'prompt', 'chosen' and 'rejected'",
    "preference_implicit": "'chosen' and 'rejected' sharing their prompt",
    "kto": "'prompt', 'completion' and 'label'",
    "messages": "'messages': [{'role', 'content'}, ...]",
    "sharegpt": "'conversations': [{'from', 'value'}, ...]",
    "alpaca": "'instruction', 'output' and optionally 'input'",
    "prompt_completion": "'prompt' and 'completion'",
    "text": "'text'",
    "prompt": "'prompt'",
}
_KIND_NEEDS = {
    "clm": "'text'",
    "sft": "'messages', 'conversations', 'prompt'+'completion', 'instruction'+'output' or 'text'",
    "preference": "'chosen' and 'rejected'",
    "kto": "'prompt', 'completion' and 'label'",
    "prompt": "'prompt', 'messages' or 'instruction'",
}


def candidate_formats(row: dict) -> list[str]:
    """Every format `row`'s keys fit, most specific first (None values count as missing)."""
    keys = {k for k, v in row.items() if v is not None}
    out = []
    if {"chosen", "rejected"} <= keys:
        out.append("preference" if "prompt" in keys else "preference_implicit")
    if {"completion", "label"} <= keys:
        out.append("kto")
    if "messages" in keys:
        out.append("messages")
    if "conversations" in keys:
        out.append("sharegpt")
    if "instruction" in keys:
        out.append("alpaca")
    if {"prompt", "completion"} <= keys:
        out.append("prompt_completion")
    if "text" in keys:
        out.append("text")
    if "prompt" in keys:
        out.append("prompt")
    return out


def detect_format(row: dict) -> str:
    """The most specific format of `row` from its keys."""
    found = candidate_formats(row)
    if not found:
        raise ValueError(
            f"cannot tell the format from keys {sorted(row)}; expected one of: "
            "text | messages | conversations | instruction+output | prompt+completion | "
            "prompt+chosen+rejected | chosen+rejected | prompt+completion+label | prompt"
        )
    return found[0]


def resolve_format(kind: str, row: dict) -> str:
    """The format ``format="auto"`` picks for `kind` from the first `row` (ValueError if none fits)."""
    found = candidate_formats(row)
    for f in found:
        if f in KIND_FORMATS[kind]:
            return f
    if kind in ("clm", "kto", "preference"):
        # One obvious format for the kind: validating against it names the missing key.
        return {"clm": "text", "kto": "kto"}.get(
            kind, "preference" if row.get("prompt") is not None else "preference_implicit"
        )
    if not found:
        detect_format(row)  # raises: nothing recognisable
    raise ValueError(
        f"looks like {found[0]!r} (keys {sorted(row)}) but kind {kind!r} needs {_KIND_NEEDS[kind]}"
    )


def _is_messages(x: Any) -> bool:
    return isinstance(x, list)


def _message(m: Any, where: str, tools: list | None = None) -> dict:
    """One message as {role, content} (+ an assistant's `tool_calls`, a tool message's `name` /
    `tool_call_id`); ShareGPT's {from, value} is translated. `tools`: the row's function names, which every
    tool call must name (None: no `tools` column, so no tool call is allowed)."""
    if not isinstance(m, dict):
        raise ValueError(f"{where} must be an object with 'role' and 'content', got {_type_name(m)}")
    if "role" in m and m.get("role") == "assistant" and m.get("tool_calls"):
        out = {"role": "assistant", "content": m.get("content") or ""}
        if not isinstance(out["content"], str):
            raise ValueError(f"{where} content must be a string, got {_type_name(out['content'])}")
        out["tool_calls"] = _tool_calls(m["tool_calls"], f"{where} tool_calls", tools)
        return out
    if "role" in m or "content" in m:
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"{where} has role {role!r}; expected one of {ROLES}")
    elif "from" in m or "value" in m:
        speaker, content = m.get("from"), m.get("value")
        role = SPEAKERS.get(str(speaker).lower())
        if role is None:
            raise ValueError(f"{where} is from {speaker!r}; expected one of {tuple(dict.fromkeys(SPEAKERS))}")
    else:
        raise ValueError(
            f"{where} must have 'role' and 'content' (or ShareGPT's 'from' and 'value'), got keys {sorted(m)}"
        )
    if not isinstance(content, str):
        raise ValueError(f"{where} content must be a string, got {_type_name(content)}")
    out = {"role": role, "content": content}
    if role == "tool":
        out.update({k: str(m[k]) for k in ("name", "tool_call_id") if m.get(k) is not None})
    return out


def _json_value(x: Any, where: str) -> Any:
    """A JSON-encoded string decoded (the Hub's datasets often store schemas and arguments as strings)."""
    if not isinstance(x, str):
        return x
    import json

    try:
        return json.loads(x)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is a string that is not valid JSON ({e.msg} at char {e.pos})") from None


def _tools(x: Any) -> list[dict]:
    """The row's `tools` column: JSON schemas of functions, as transformers' chat templates take them:
    [{"type": "function", "function": {"name", "description", "parameters"}}] (a bare {"name", ...} is
    wrapped)."""
    x = _json_value(x, "'tools'")
    if not isinstance(x, list) or not x:
        raise ValueError(f"'tools' must be a non-empty list of function schemas, got {_type_name(x)}")
    out = []
    for j, t in enumerate(x):
        t = _json_value(t, f"'tools'[{j}]")
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"'tools'[{j}] must be a function schema with a 'name', got {_type_name(t)}")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ValueError(f"'tools'[{j}] ({fn['name']}) 'parameters' must be a JSON schema object")
        out.append({"type": "function", "function": {**fn, "parameters": params}})
    return out


def _tool_calls(x: Any, where: str, tools: list | None) -> list[dict]:
    """An assistant turn's tool calls as [{"type": "function", "function": {"name", "arguments": dict}}]."""
    if tools is None:
        raise ValueError(f"{where}: the row calls tools but has no 'tools' column (their JSON schemas)")
    if not isinstance(x, list):
        raise ValueError(f"{where} must be a list of calls, got {_type_name(x)}")
    out = []
    for j, c in enumerate(x):
        fn = c.get("function", c) if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"{where}[{j}] must be a call with a function 'name', got {_type_name(c)}")
        if fn["name"] not in tools:
            raise ValueError(
                f"{where}[{j}] calls {fn['name']!r}, which 'tools' does not define ({sorted(tools)})"
            )
        args = _json_value(fn.get("arguments", {}), f"{where}[{j}] arguments")
        if not isinstance(args, dict):
            raise ValueError(f"{where}[{j}] arguments must be a JSON object, got {_type_name(args)}")
        out.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def _check_messages(x: Any, field: str, tools: list | None = None) -> list[dict]:
    if not isinstance(x, list) or not x:
        what = "an empty list" if isinstance(x, list) else _type_name(x)
        raise ValueError(f"'{field}' must be a non-empty list of messages, got {what}")
    return [_message(m, f"'{field}'[{j}]", tools) for j, m in enumerate(x)]


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
    if not isinstance(value, list):
        raise ValueError(f"'{field}' must be a string or a list of messages, got {_type_name(value)}")
    return _check_messages(value, field)


def _same_type(row: dict, fields: tuple[str, ...]) -> None:
    kinds = {f: _is_messages(row[f]) for f in fields}
    if len(set(kinds.values())) > 1:
        desc = ", ".join(f"'{f}' is {'messages' if m else 'a string'}" for f, m in kinds.items())
        raise ValueError(f"mixes plain text and messages: {desc}; expected all strings or all message lists")


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _extract_text_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    n = _common_prefix(chosen, rejected)
    transcript = "Human:" in chosen and "Assistant:" in chosen
    cut = chosen[:n].rfind("Assistant:")
    if cut >= 0:
        n = cut + len("Assistant:")
    elif transcript:
        raise ValueError(
            "'chosen' and 'rejected' are Human/Assistant transcripts whose human turns differ "
            f"(first difference at character {n + 1}); expected both to repeat the same "
            "conversation up to a final 'Assistant:' and differ only in the answer"
        )
    else:
        while n > 0 and not chosen[n - 1].isspace() and n < len(chosen):
            n -= 1
    if chosen[n:] == rejected[n:]:
        raise ValueError("'chosen' and 'rejected' are identical")
    if n == 0:
        raise ValueError("'chosen' and 'rejected' share no prompt")
    if transcript and ("Human:" in chosen[n:] or "Human:" in rejected[n:]):
        raise ValueError(
            "'chosen' and 'rejected' are Human/Assistant transcripts that differ before their "
            "last human turn; expected both to repeat the same conversation up to a final "
            "'Assistant:' and differ only in the answer"
        )
    return chosen[:n], chosen[n:], rejected[n:]


def _extract_message_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list, list, list]:
    k = _common_prefix(chosen, rejected)
    while k > 0 and chosen[k - 1]["role"] == "assistant":
        k -= 1
    if k == 0:
        raise ValueError(
            "'chosen' and 'rejected' share no prompt turns; expected both to start with the "
            "same user turns (or give 'prompt' separately)"
        )
    if chosen[k:] == rejected[k:]:
        raise ValueError("'chosen' and 'rejected' are identical")
    for field, rest in (("chosen", chosen[k:]), ("rejected", rejected[k:])):
        if any(m["role"] != "assistant" for m in rest):
            raise ValueError(
                f"'chosen' and 'rejected' differ before their last user turn ('{field}' has a "
                f"{next(m['role'] for m in rest if m['role'] != 'assistant')} turn after the "
                "shared prompt); expected the same turns up to the answer"
            )
    return chosen[:k], chosen[k:], rejected[k:]


def extract_prompt(chosen: str | list[dict], rejected: str | list[dict]) -> tuple[Any, Any, Any]:
    """Splits an implicit-prompt pair into (prompt, chosen completion, rejected completion)."""
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise ValueError("'chosen' and 'rejected' mix plain text and messages")
    if isinstance(chosen, str):
        return _extract_text_prompt(chosen, rejected)
    return _extract_message_prompt(chosen, rejected)


def _label(row: dict) -> bool:
    value = _get(row, "label")
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"'label' must be a boolean (true = desirable), got {value!r}")


def _alpaca_messages(row: dict) -> tuple[list[dict], str | None]:
    """(prompt messages, output or None) of an Alpaca row."""
    fields = {}
    for f in ("instruction", "input", "output", "system"):
        value = row.get(f)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"'{f}' must be a string, got {_type_name(value)}")
        fields[f] = value or ""
    if not fields["instruction"]:
        raise ValueError("'instruction' is empty")
    user = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"] else "")
    prompt = ([{"role": "system", "content": fields["system"]}] if fields["system"] else []) + [
        {"role": "user", "content": user}
    ]
    return prompt, row.get("output")


def _conversation(row: dict, fmt: str, kind: str) -> dict:
    """messages / sharegpt rows."""
    field = "messages" if fmt == "messages" else "conversations"
    tools = _tools(row["tools"]) if row.get("tools") is not None else None
    names = [t["function"]["name"] for t in tools] if tools else None
    messages = _check_messages(_get(row, field), field, names)
    if tools and kind != "sft":
        raise ValueError(
            f"'tools' is read in SFT rows (tool-use conversations); a {kind} row cannot take it yet"
        )
    if kind == "prompt":
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages:
            raise ValueError(f"'{field}' has no turns before the assistant's")
        return {"prompt": messages, "answer": row.get("answer")}
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"'{field}' has no assistant turn; expected at least one to train on")
    return {"messages": messages, "tools": tools} if tools else {"messages": messages}


def _preference(row: dict) -> dict:
    prompt = _text_or_messages(row, "prompt", allow_empty=True)
    chosen = _text_or_messages(row, "chosen")
    rejected = _text_or_messages(row, "rejected")
    if isinstance(prompt, str) and _is_messages(chosen) and _is_messages(rejected):
        if chosen[0]["role"] != "assistant" or rejected[0]["role"] != "assistant":
            prompt, chosen, rejected = _extract_message_prompt(chosen, rejected)  # UltraFeedback-binarized
        else:
            prompt = [{"role": "user", "content": prompt}]
    ex = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    _same_type(ex, ("prompt", "chosen", "rejected"))
    return ex


def _normalize(row: dict, fmt: str, kind: str) -> dict:
    if fmt == "text":
        text = _get(row, "text")
        if not isinstance(text, str) or not text:
            raise ValueError(
                f"'text' must be a non-empty string, got {_type_name(text) if text else 'empty'}"
            )
        return {"text": text}
    if fmt in ("messages", "sharegpt"):
        return _conversation(row, fmt, kind)
    if fmt == "alpaca":
        prompt, output = _alpaca_messages(row)
        if kind == "prompt":
            return {"prompt": prompt, "answer": row.get("answer")}
        if not output:
            raise ValueError("'output' is missing or empty")
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": output}]}
    if fmt == "prompt":
        return {"prompt": _text_or_messages(row, "prompt"), "answer": row.get("answer")}
    if fmt == "preference_implicit":
        prompt, chosen, rejected = extract_prompt(
            _text_or_messages(row, "chosen"), _text_or_messages(row, "rejected")
        )
        if kind == "prompt":
            return {"prompt": prompt, "answer": row.get("answer")}
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if fmt in ("prompt_completion", "kto", "preference") and kind == "prompt":
        return {"prompt": _text_or_messages(row, "prompt"), "answer": row.get("answer")}
    if fmt in ("prompt_completion", "kto"):
        ex = {
            "prompt": _text_or_messages(row, "prompt", allow_empty=True),
            "completion": _text_or_messages(row, "completion"),
        }
        _same_type(ex, ("prompt", "completion"))
        if fmt == "kto":
            ex["label"] = _label(row)
        return ex
    if fmt == "preference":
        return _preference(row)
    raise ValueError(f"unknown format {fmt!r}; expected 'auto' or one of {FORMATS}")


class Adapter:
    """``adapter(row, where) -> example`` for one dataset kind and row format.

    With ``fmt="auto"`` the format is resolved (`resolve_format`) from the first row adapted of each file
    (``where`` up to its `` line N`` / `` row N`` / `` item N``) and then holds for every row of that file,
    so a later row missing a key is reported as missing, while a list of files may mix formats (messages
    and prompt_completion files in one SFT run). ``format`` is the resolved format, "+"-joined when files
    differ (None before the first row). Errors raise ``DataError(f"{where}: ...")``.
    """

    def __init__(self, kind: str, fmt: str = "auto"):
        if kind not in KIND_FORMATS:
            raise ValueError(f"kind {kind!r}: expected one of {sorted(KIND_FORMATS)}")
        if fmt != "auto" and fmt not in KIND_FORMATS[kind]:
            raise ConfigError(
                f"config.data.format={fmt!r}: does not fit kind {kind!r}; it accepts 'auto' or "
                f"{KIND_FORMATS[kind]}"
            )
        self.kind = kind
        self.fixed = None if fmt == "auto" else fmt
        self.by_file: dict[str, str] = {}

    @property
    def format(self) -> str | None:
        return self.fixed or ("+".join(dict.fromkeys(self.by_file.values())) or None)

    def __call__(self, row: dict, where: str) -> dict:
        try:
            if not isinstance(row, dict):
                raise ValueError(f"a row must be a JSON object, got {_type_name(row)}")
            file = _ROW_NUMBER.sub("", where)
            fmt = self.fixed or self.by_file.get(file) or resolve_format(self.kind, row)
            try:
                example = _normalize(row, fmt, self.kind)
            except ValueError as e:
                if str(e).endswith("is missing"):
                    raise ValueError(f"{e}; expected {fmt} rows with {SHAPES[fmt]}") from None
                raise
            if not self.fixed:
                self.by_file.setdefault(file, fmt)
            return example
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None


_ROW_NUMBER = re.compile(r"(^| )(line|row|item) \d+$")


def make_adapter(kind: str, fmt: str = "auto") -> Callable[[dict, str], dict]:
    """An `Adapter` for dataset `kind` and row format `fmt` ("auto" or one of `FORMATS`)."""
    return Adapter(kind, fmt)
