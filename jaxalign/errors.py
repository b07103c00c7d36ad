"""Errors a user can cause and fix: bad data, config values, checkpoints, tokenizers.

Each is a `UserError`; the command-line entry points print ``error: <message>`` on one line and exit with
code 2 (no traceback unless ``--verbosity=1`` is given). Messages name where the problem is, as
``<file> line <N>: <what is wrong and what was expected>`` (1-based lines; ``item N`` in JSON arrays) or
``config.<field>=<value>: <why>``. Internal bugs are any other exception and keep their traceback.

Programs run their body with `run_main` (absl programs) or `user_errors_exit` (others), which print
the line, the traceback first with ``--verbosity=1``.
"""

import contextlib
import os
import re
import sys
import traceback


class UserError(ValueError):
    """Something the user gave is wrong; the message says where and what was expected."""


class ConfigError(UserError):
    """A config field has a bad value; the message starts with ``config.<field>=<value>``."""


class DataError(UserError):
    """A data file or row is unusable; the message starts with ``<file> line <N>:`` (or ``item N``)."""


class CheckpointError(UserError):
    """A checkpoint or tokenizer is missing, corrupt or of another model type; the message names its path."""


# ------------------------------------------------------------------------------------------------------
# Command-line entry points: one line and exit code 2 for what the user can fix.
# ------------------------------------------------------------------------------------------------------
EXIT_CODE = 2


def one_line(message):
    """`message` with its line breaks (and the indentation after them) folded into single spaces."""
    return re.sub(r"\s*\n\s*", " ", str(message).strip())


def verbose(argv=None):
    """True when the command line asks for tracebacks: ``--verbosity=N`` / ``-v=N`` with N >= 1.

    Read from argv (not absl's parsed flags) so that it also works when flag parsing itself failed.
    """
    argv = sys.argv if argv is None else argv
    level = None
    for i, a in enumerate(argv):
        name, eq, value = a.partition("=")
        if name in ("--verbosity", "-v"):
            value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                level = int(value)
            except ValueError:
                pass
    return level is not None and level >= 1


def exit_with(message, exc=None, argv=None):
    """Prints ``error: <message>`` as one line on stderr (after `exc`'s traceback when `verbose`) and
    exits with code 2."""
    if exc is not None and verbose(argv):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()
    sys.exit(EXIT_CODE)


@contextlib.contextmanager
def user_errors_exit(argv=None):
    """Around a program's body: a `UserError` ends it with one line and exit code 2; any other exception
    (a bug) keeps its traceback."""
    try:
        yield
    except UserError as e:
        exit_with(e, e, argv)


_PARSE_WHY = (
    (r"invalid literal for int\(\)", "expected an integer"),
    (r"could not convert string to float", "expected a number"),
    (r"Non-boolean argument", "expected true or false"),
)


def _unknown_field(flag_values, argv):
    """The first ``--<flag>.<field>=<value>`` override of a ConfigDict flag whose field does not exist:
    (``<flag>.<field>``, value, why) or None."""
    import difflib

    for a in argv[1:]:
        name, _, value = a[2:].partition("=") if a.startswith("--") else ("", "", "")
        root, dot, path = name.partition(".")
        if not dot or root not in flag_values:
            continue
        node = flag_values[root].value
        if node is None and hasattr(flag_values[root].parser, "parse"):  # the file flag failed before storing
            files = [b.partition("=")[2] for b in argv[1:] if b.startswith(f"--{root}=")]
            node = flag_values[root].parser.parse(files[-1]) if files else None
        parts = path.split(".")
        for depth, part in enumerate(parts):
            keys = list(node.keys()) if hasattr(node, "keys") else None
            if keys is None or "[" in part:
                break
            if part not in keys:
                where = ".".join([root, *parts[:depth]])
                close = difflib.get_close_matches(part, keys, n=1)
                hint = f'did you mean "{close[0]}"?' if close else f"it has {', '.join(sorted(keys))}"
                return name, value, f"{where} has no field {part!r}; {hint}"
            node = node[part]
    return None


def flag_error_message(exc, argv, flag_values=None):
    """A flag-parsing failure as one line: ``<flag>=<value>: <why>``."""
    if flag_values is None:
        from absl import flags

        flag_values = flags.FLAGS
    try:
        unknown = _unknown_field(flag_values, argv)
    except Exception:  # the config file itself did not load: no fields to look at
        unknown = None
    if unknown is not None:
        field, value, why = unknown
        return f"{field}={value}: {why}"
    if isinstance(exc, SyntaxError):  # in a config file
        return f"{exc.filename} line {exc.lineno}: {exc.msg}"
    text = one_line(exc.args[0] if isinstance(exc, (KeyError, AttributeError)) and exc.args else exc)
    m = re.match(r"flag --([^=\s]+)=(.*?): (.*)$", text)
    if m:
        name, value, why = m.groups()
        if re.match(r"Flag --\S+ must have a value other than None", why):
            return f"--{name}: is required"
        for pattern, expected in _PARSE_WHY:
            if re.search(pattern, why):
                why = expected
        return f"{'' if '.' in name else '--'}{name}={value}: {_last_exception(why)}"  # config.<field>=...
    return _last_exception(text)


def _last_exception(text):
    """A folded traceback (absl quotes one when a config file's get_config raises) -> its last line's
    message, e.g. "Error whilst parsing config file: Traceback ... ValueError: <msg>" -> "<msg>"."""
    if "Traceback (most recent call last)" not in text:
        return text
    found = list(re.finditer(r"\b[A-Za-z_][\w.]*(?:Error|Exception): ", text))
    return text[found[-1].end() :] if found else text


def parse_flags(argv):
    """An absl `flags_parser`: a bad or unknown flag (or ``--config.<field>``) is one line and exit 2."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except Exception as e:  # absl's flags.Error, ml_collections' KeyError / AttributeError / IOError
        exit_with(flag_error_message(e, argv), e, argv)


def run_main(main):
    """`absl.app.run(main)` for a jaxalign program: flag errors and `UserError`s end with
    ``error: <one line>`` on stderr and exit code 2; ``--verbosity=1`` prints the traceback first."""
    from absl import app

    def wrapped(argv):
        with user_errors_exit():
            return main(argv)

    app.run(wrapped, flags_parser=parse_flags)


def config_fail(field, value, why):
    """Raises ``ConfigError("config.<field>=<value>: <why>")``."""
    raise ConfigError(f"config.{field}={value!r}: {why}")


def is_local_path(path) -> bool:
    """Whether a path that does not exist names a local file rather than a hub repository (``org/name``):
    absolute, ``.``/``~``-relative, deeper than ``org/name``, or under a folder that exists here
    (``runs/sft`` when ``runs/`` does): then "no such directory" is the answer, not a hub lookup."""
    path = str(path)
    if os.path.isabs(path) or path.startswith((".", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path):
        return True
    return "/" in path and os.path.isdir(path.split("/")[0])


def check_path(field, path, required=True):
    """A config field naming a file or directory: it must exist (a hub name, ``org/name``, is let through);
    empty is an error only when `required`."""
    if not path:
        if required:
            config_fail(field, path, "is required")
        return
    if os.path.exists(os.path.expanduser(path)):
        return
    if str(path).startswith("tfds:"):  # a TensorFlow Datasets source (data/sources.py)
        import importlib.util

        if importlib.util.find_spec("tensorflow_datasets") is None:
            config_fail(field, path, "tfds: sources need `pip install tensorflow-datasets` (not installed)")
        return
    if is_local_path(path):
        config_fail(field, path, "no such file or directory")


def check_output_dir(flag, path):
    """An output directory (`--workdir`, `--out`) must be a directory this process can write, or a new path
    whose nearest existing parent it can write (created on the first write): else one line, before
    anything loads or is written."""
    full = os.path.abspath(os.path.expanduser(path))
    probe = full
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = "is a file" if probe == full else f"is under {probe}, which is a file"
        raise UserError(f"{flag}={path}: {what}; expected a directory (or a new path)")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == full else f" (in {probe}, where it would be created)"
        raise UserError(f"{flag}={path}: cannot write there{where}; expected a writable directory")
