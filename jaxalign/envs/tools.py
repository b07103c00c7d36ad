"""Tools as plain Python functions, the tool calls in a completion, and `ToolEnv`, the environment that
answers them.

A tool is a function with annotated arguments and a docstring; `tool_schema` gives the JSON schema that
chat templates take (`tools=`). A tool rejects bad arguments by raising `ToolError`: the model sees the
message as the tool's answer. Any other exception is a bug in the tool and stops the run (one line
naming it and the episode's prompt row).

Tool calls are read from a completion in the formats chat templates write them (`parse_tool_calls`):
  embedded   ``<|call|>name{"arg": ...}`` (the embedded task's template; several may follow each other)
  Hermes     ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Qwen 2.5/3, Hermes, many others)
  Mistral    ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``
A call that does not parse, names no tool of the environment, or gives arguments the schema does not
take is malformed: it is answered with an error message (the model's to read and fix) and counted in
`tools/errors`, never a crash.
"""

from __future__ import annotations

import ast
import inspect
import json
import operator
import re
from typing import Callable, Sequence

import numpy as np

from jaxalign import plugins


class ToolError(ValueError):
    """A tool's answer to arguments it cannot take: shown to the model, counted in `tools/errors`."""


class EpisodeError(RuntimeError):
    """An environment's failure on one episode (`index`): the run stops with one line naming the
    environment and the episode's prompt row."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


# ----------------------------------------------------------------------------------------------------
# The tool library.
# ----------------------------------------------------------------------------------------------------
_WORDS = {"plus": "+", "minus": "-", "times": "*", "divided by": "/", "x": "*"}
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calc(expr: str) -> str:
    """Evaluates an arithmetic expression: numbers, + - * / and parentheses ("plus", "minus", "times" and
    "divided by" read as the signs)."""
    text = str(expr).strip().rstrip("?.= ")
    for word, sign in _WORDS.items():
        text = re.sub(rf"\b{word}\b", sign, text)
    if not text or len(text) > 200:
        raise ToolError(f"cannot evaluate {str(expr)[:60]!r}: expected an arithmetic expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"cannot evaluate {str(expr)[:60]!r}: not an arithmetic expression") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ToolError("division by zero")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ToolError(f"cannot evaluate {str(expr)[:60]!r}: only numbers, + - * / and ( ) are allowed")

    value = ev(tree)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 6) if isinstance(value, float) else value)


calculator = calc  # the library's name for it

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def tool_schema(fn: Callable) -> dict:
    """The JSON schema of a tool function (transformers' format): its name, its docstring's first
    paragraph, and one property per argument (typed from the annotation; required unless defaulted)."""
    sig = inspect.signature(fn)
    props, required = {}, []
    for name, p in sig.parameters.items():
        ann = p.annotation
        if isinstance(ann, str):  # `from __future__ import annotations`
            ann = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}.get(ann)
        props[name] = {"type": _JSON_TYPES.get(ann, "string")}
        if p.default is inspect.Parameter.empty:
            required.append(name)
    doc = inspect.getdoc(fn) or fn.__name__
    return {
        "type": "function",
        "function": {
            "name": fn.__name__,
            "description": " ".join(doc.split("\n\n")[0].split()),
            "parameters": {"type": "object", "properties": props, "required": required},
        },
    }


def _type_ok(value, json_type):
    if json_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if json_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    py = {"string": str, "boolean": bool, "array": list, "object": dict}.get(json_type)
    return py is None or isinstance(value, py)


# ----------------------------------------------------------------------------------------------------
# Reading calls.
# ----------------------------------------------------------------------------------------------------
_EMBEDDED = re.compile(r"<\|call\|>\s*([A-Za-z_][\w.\-]*)?")
_HERMES = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.S)
_MISTRAL = "[TOOL_CALLS]"


def _json_at(text, start):
    """The JSON value starting at text[start] (after spaces), or raises ValueError."""
    i = start
    while i < len(text) and text[i].isspace():
        i += 1
    value, _ = json.JSONDecoder().raw_decode(text, i)
    return value


def _check_call(name, args, schemas):
    """None if `name(args)` fits its schema, else what is wrong (for the model to read)."""
    if name not in schemas:
        return f"unknown tool {name!r}; the tools are {sorted(schemas)}"
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return f"{name}: arguments are not JSON"
    if not isinstance(args, dict):
        return f"{name}: arguments must be a JSON object"
    params = schemas[name]["function"].get("parameters", {})
    props = params.get("properties", {})
    missing = [k for k in params.get("required", []) if k not in args]
    if missing:
        return f"{name}: missing argument(s) {missing}"
    unknown = [k for k in args if k not in props]
    if unknown:
        return f"{name}: unknown argument(s) {unknown}; expected {sorted(props)}"
    for k, v in args.items():
        if not _type_ok(v, props[k].get("type")):
            return f"{name}: argument {k!r} must be of type {props[k].get('type')}"
    return None


def parse_tool_calls(text: str, schemas: Sequence[dict]):
    """A completion's tool calls: (content before the first call, [(name, arguments dict)] of the
    well-formed calls, [what is wrong] for each malformed one). Both lists empty: a plain answer."""
    by_name = {s["function"]["name"]: s for s in schemas}
    calls, errors, starts = [], [], []

    def add(name, args):
        why = _check_call(name, args, by_name)
        if why is None:
            calls.append((name, json.loads(args) if isinstance(args, str) else args))
        else:
            errors.append(why)

    for m in _EMBEDDED.finditer(text):
        starts.append(m.start())
        if not m.group(1):
            errors.append("a call names no tool: expected <|call|>name{...}")
            continue
        try:
            add(m.group(1), _json_at(text, m.end()))
        except ValueError:
            errors.append(f"{m.group(1)}: arguments are not a JSON object")
    for m in _HERMES.finditer(text):
        starts.append(m.start())
        try:
            obj = json.loads(m.group(1))
        except ValueError:
            errors.append("<tool_call> holds no JSON object")
            continue
        if not isinstance(obj, dict) or "name" not in obj:
            errors.append('<tool_call> JSON needs "name" and "arguments"')
            continue
        add(obj["name"], obj.get("arguments", obj.get("parameters", {})))
    j = text.find(_MISTRAL)
    if j >= 0:
        starts.append(j)
        try:
            items = _json_at(text, j + len(_MISTRAL))
            items = items if isinstance(items, list) else [items]
        except ValueError:
            items = None
            errors.append("[TOOL_CALLS] holds no JSON list")
        for obj in items or ():
            if isinstance(obj, dict) and "name" in obj:
                add(obj["name"], obj.get("arguments", obj.get("parameters", {})))
            else:
                errors.append('a [TOOL_CALLS] entry needs "name" and "arguments"')
    content = text[: min(starts)] if starts else text
    return content, calls, errors


# ----------------------------------------------------------------------------------------------------
# The environment.
# ----------------------------------------------------------------------------------------------------
class ToolEnv:
    """Answers tool calls with the tools' results until the model answers without one, which ends the
    episode and is scored by `reward` (a reward function `(answer, completion) -> float`, as
    `config.reward.function`). A turn with calls earns 0 and is answered by one `role: tool` message per
    call (an error message for a malformed one). Args (`config.env.args`):

      tools:  comma-separated "package.module:function" tools (default the calculator);
      reward: the final answer's reward function (default the embedded task's `reward`).

    Logged (per episode): tools/call_rate (episodes with a call), tools/calls_per_episode, tools/errors
    (malformed calls per episode) and tools/well_formed (the calls' fraction that parsed and fit).
    """

    def __init__(
        self, tools: str = "jaxalign.envs.tools:calc", reward: str = "jaxalign.data.embedded:reward"
    ):
        specs = [t.strip() for t in str(tools).split(",") if t.strip()]
        if not specs:
            raise ValueError("tools: name at least one 'package.module:function'")
        self.functions = {}
        for spec in specs:
            fn = plugins.resolve_fn(spec)
            self.functions[fn.__name__] = fn
        self.tools = [tool_schema(f) for f in self.functions.values()]
        self.reward_fn = plugins.resolve_fn(reward)
        self.answers: list = []

    def reset(self, rows):
        self.answers = [str(r.get("answer", "")) for r in rows]
        convs = []
        for r in rows:
            p = r["prompt"]
            convs.append([{"role": "user", "content": p}] if isinstance(p, str) else [dict(m) for m in p])
        return convs

    def step(self, conversations, completions):
        out = []
        for i, text in enumerate(completions):
            if text is None:
                out.append((None, 0.0, {}))
                continue
            _, calls, errors = parse_tool_calls(text, self.tools)
            n = len(calls) + len(errors)
            if not n:  # a plain answer: the episode's end
                out.append((None, self.reward_fn(self.answers[i], text), {"calls": 0, "errors": 0}))
                continue
            messages, bad = [], len(errors)
            for name, args in calls:
                try:
                    result = self.functions[name](**args)
                except ToolError as e:
                    bad += 1
                    result = f"error: {e}"
                except Exception as e:  # a bug in the tool: the run stops, naming it and the row
                    fn = self.functions[name]
                    raise EpisodeError(
                        i, f"tool {fn.__module__}:{fn.__name__} raised {type(e).__name__}: {e}"
                    ) from None
                messages.append({"role": "tool", "content": str(result)})
            messages += [{"role": "tool", "content": f"error: {why}"} for why in errors]
            out.append((messages, 0.0, {"calls": n, "errors": bad}))
        return out

    def summarize(self, totals):
        """Per-episode sums of the infos -> the logged tool metrics."""
        calls = np.asarray(totals.get("calls", [0.0]), np.float64)
        errors = np.asarray(totals.get("errors", [0.0]), np.float64)
        return {
            "tools/call_rate": float(np.mean(calls > 0)),
            "tools/calls_per_episode": float(np.mean(calls)),
            "tools/errors": float(np.mean(errors)),
            "tools/well_formed": float(1.0 - errors.sum() / calls.sum()) if calls.sum() else 1.0,
        }
