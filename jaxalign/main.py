"""The jaxalign trainer.

  python -m jaxalign.main --config=configs/dpo.py --workdir=/tmp/dpo \
      --config.optimizer.learning_rate=5e-7 --config.dpo.beta=0.05 --config.mesh.fsdp=4

`--config` is a Python file with `get_config()` (see configs/); every field can be overridden with
`--config.<field>=<value>`, and a misspelt field is an error. `--workdir` receives checkpoints (resumed
from automatically), metrics.jsonl, TensorBoard events and the final Hugging Face export.

Bad input (a flag, config value, data file, checkpoint or tokenizer) ends the run with exit code 2 and one
line on stderr, `error: <where>: <what is wrong>`, before anything is written to the workdir;
`--verbosity=1` prints the traceback too. In a multi-process run, a process that dies makes the others
exit with code 69 and one line, `error: process I of N lost contact with another process ...`
(`jaxalign.hosts.exit_if_a_peer_is_lost`).
"""

import os


from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with get_config().", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Checkpoints, logs and exports; default runs/<objective>.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import importlib
    from jaxalign import registry
    from jaxalign.errors import ConfigError, UserError, check_output_dir

    if not flags.FLAGS["verbosity"].present:  # orbax and jax log a lot at INFO; --verbosity=0 shows it.
        logging.set_verbosity(logging.WARNING)
    # `datasets` (imported only for hub data sets: 2 s) reads these when it is imported.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    config = _CONFIG.value
    try:
        config.objective
    except OSError as e:  # ml_collections defers a config file's load error to the first access
        path = flags.FLAGS["config"].config_filename
        why = "no such file" if not os.path.isfile(path) else f"cannot load it ({e})"
        raise UserError(f"--config={path}: {why}; expected a Python file with get_config()") from e
    workdir = _WORKDIR.value or os.path.join("runs", config.objective)
    check_output_dir("--workdir", workdir)  # before anything loads
    if config.objective not in registry.OBJECTIVES:
        raise ConfigError(
            f"config.objective={config.objective!r}: unknown objective; expected one of {registry.names()}"
        )
    # The objective's trainer (jaxalign/registry.py): the offline loop, the RL loop or the evaluator.
    module, fn = registry.TRAINERS[registry.get(config.objective).trainer].split(":")
    from jaxalign import hosts

    with hosts.exit_if_a_peer_is_lost(workdir):  # another process died: one line and exit code 69
        getattr(importlib.import_module(module), fn)(config, workdir)


if __name__ == "__main__":
    from jaxalign.errors import run_main

    flags.mark_flags_as_required(["config"])
    run_main(main)  # a bad flag, config value, data file or checkpoint: `error: <one line>`, exit code 2
