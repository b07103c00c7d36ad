"""Test setup: 8 fake CPU devices so sharded code is testable on one machine."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# JAX's persistent compilation cache, one per test session (set before anything imports jax). Tests, the
# command-line programs they start and the pipeline's stages build the same XLA programs again and again
# from new Python closures (new jit objects: in-memory cache misses); this cache is keyed by the program
# (and the devices, flags and jax version), so the repeats load the compiled executable instead. The
# directory is this session's own and removed at exit: nothing carries over between sessions. Set
# JAX_COMPILATION_CACHE_DIR to use another one (kept), or JAX_ENABLE_COMPILATION_CACHE=false to turn it off.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix=f"jaxalign-tests-jax-cache-{os.getpid()}-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import contextlib
import runpy
import subprocess
import sys
import traceback
import warnings

import pytest

# Tests import `configs.<name>` and `launch/`: the repository root must be importable.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# CI runs the slow end-to-end tests at a reduced size.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# ------------------------------------------------------------------------------------------------------
# Command-line programs run in this process (`cli` fixture).
# ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _fresh_absl_flags():
    """absl's global FLAGS as a new process has them (absl's own flags, unparsed) for the duration; the
    flags that test modules' imports defined (and those the program defines) restored / dropped after."""
    from absl import flags

    fv = flags.FLAGS
    d = fv.__dict__
    saved = {k: (v.copy() if isinstance(v, (dict, set)) else v) for k, v in d.items()}
    for k in ("__flags_by_module", "__flags_by_module_id", "__key_flags_by_module"):
        saved[k] = {m: list(v) for m, v in d[k].items()}
    try:
        for name in list(fv):
            if not fv.find_module_defining_flag(name, "").startswith("absl."):
                delattr(fv, name)
        fv.unparse_flags()
        yield
    finally:
        fv.unparse_flags()  # absl's own flags (verbosity, ...) back to their defaults
        d.clear()
        d.update(saved)


def run_module_in_process(module, args, monkeypatch, capfd, cwd=None):
    """`python -m <module> <args>` run in this process; a `subprocess.CompletedProcess` with its exit code,
    stdout and stderr (file descriptors 1 and 2, as a child process's).

    The module's code runs as ``__main__`` (runpy), so its flags are defined on absl's global FLAGS and it
    ends through its own ``run_main`` call: `parse_flags`, `user_errors_exit` and `exit_with` print the
    ``error:`` line and raise SystemExit(2) exactly as in a subprocess. What differs from a fresh process:
    the modules are already imported and JAX has this process's 8 CPU devices; absl's one-time process
    setup (its logging handler on the root logger) is skipped so that it does not leak into other tests.
    An exception other than SystemExit (a bug) is exit code 1 with its traceback on stderr, like Python's.
    """
    from absl import app

    capfd.readouterr()  # what the test printed before
    monkeypatch.setattr(sys, "argv", [module.replace(".", "/") + ".py", *map(str, args)])
    monkeypatch.setattr(sys, "path", list(sys.path))  # main puts the config's root on it
    monkeypatch.setattr(app._run_init, "done", True)
    monkeypatch.chdir(cwd or _ROOT)
    env = dict(os.environ)
    code = 0
    try:
        with _fresh_absl_flags(), warnings.catch_warnings():
            # a test module may have imported it: its code runs again, as __main__, all the same
            warnings.filterwarnings("ignore", r".* found in sys.modules after import", RuntimeWarning)
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    except SystemExit as e:  # sys.exit(None | int | message), as the interpreter turns it into a status
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except Exception:  # noqa: BLE001 - a bug: its traceback and status 1, as an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        os.environ.clear()
        os.environ.update(env)
    sys.stdout.flush()
    sys.stderr.flush()
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess([sys.executable, "-m", module, *map(str, args)], code, out, err)


@pytest.fixture
def cli(monkeypatch, capfd):
    """``cli(module, *args)``: `run_module_in_process` (for many bad-input cases in milliseconds each where
    a subprocess pays seconds of imports)."""
    return lambda module, *args, cwd=None: run_module_in_process(module, args, monkeypatch, capfd, cwd)


@pytest.fixture
def stub_judge():
    """``make(tokenizer, quality, bias)``: a judge's verdict function for `jaxalign.eval.judge` whose logits
    [l("1"), l("2")] are [quality(Answer 1) + bias, quality(Answer 2)], read off the decoded judgement (a
    template with "1: {answer_1}\\n2: {answer_2}\\nBetter")."""
    import re

    import numpy as np

    def make(tokenizer, quality, bias):
        def fn(seqs):
            out = []
            for s in seqs:
                m = re.search(r"1: (.*)\n2: (.*)\nBetter", tokenizer.decode(s))
                out.append([quality[m.group(1)] + bias, quality[m.group(2)]])
            return np.asarray(out)

        return fn

    return make
