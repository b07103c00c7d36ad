"""User functions that configs name as ``"package.module:function"`` (reward functions, answer checks,
refusal detectors): one resolver for training, evaluation and synthesis."""

from __future__ import annotations

import importlib
from typing import Callable


def resolve_fn(spec: str | Callable) -> Callable:
    """`spec` itself if callable, else the function ``"package.module:function"`` names.

    Raises:
      ValueError: the spec is malformed, its module cannot be imported, or it has no such function
        (the message names which; callers turn it into a config error).
    """
    if callable(spec):
        return spec
    module, sep, name = str(spec).partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{spec!r}: expected 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), name, None)
    except ImportError as e:
        raise ValueError(f"{spec!r}: cannot import {module} ({e})") from e
    except Exception as e:  # the module itself fails: a syntax error, an exception at import time
        where = f" ({e.filename} line {e.lineno})" if isinstance(e, SyntaxError) and e.filename else ""
        raise ValueError(
            f"{spec!r}: importing {module} raised {type(e).__name__}: {getattr(e, 'msg', e)}{where}"
        ) from None
    if not callable(fn):
        raise ValueError(f"{spec!r}: {module} has no function {name!r}")
    return fn
