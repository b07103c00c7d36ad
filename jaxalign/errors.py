"""Errors a user can cause and fix: bad data, config values, checkpoints, tokenizers.

Each is a `UserError`; the command-line entry points print ``error: <message>`` on one line and exit with
code 2 (no traceback unless ``--verbosity`` is given). Messages name where the problem is, as
``<file> line <N>: <what is wrong and what was expected>`` (1-based lines; ``item N`` in JSON arrays) or
``config.<field>=<value>: <why>``. Internal bugs are any other exception and keep their traceback.
"""


class UserError(ValueError):
  """Something the user gave is wrong; the message says where and what was expected."""


class ConfigError(UserError):
  """A config field has a bad value; the message starts with ``config.<field>=<value>``."""


class DataError(UserError):
  """A data file or row is unusable; the message starts with ``<file> line <N>:`` (or ``item N``)."""


class CheckpointError(UserError):
  """A checkpoint or tokenizer is missing, corrupt or of another model type; the message names its path."""
