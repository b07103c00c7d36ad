"""Resumable training checkpoints with orbax: train state + data position + run metadata.

Saved asynchronously every `train.checkpoint_every` steps and at the end; the last `keep` are kept. A
checkpoint is only visible once complete (orbax writes to a temporary directory and renames), so a crash
never leaves a half-written checkpoint to resume from; a killed save's temporary directory is deleted when
the next run opens the directory (tested by killing a run with SIGKILL inside a save:
tests/trainers/test_preemption.py, through the test-only `JAXALIGN_TEST_KILL_IN_SAVE_AT_STEP`).
"""

import json
import os
import signal

import jax
import orbax.checkpoint as ocp


class StateCheckpointer:
    def __init__(self, directory, keep=2, async_save=True):
        self.directory = os.path.abspath(directory)
        _check_latest_step(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True
        )
        _maybe_kill_in_save()
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step, state, data_state, meta=None):
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta or {}),
            ),
        )

    def read_meta(self, step=None):
        """The metadata saved with checkpoint `step` (default the latest), without restoring the state;
        {} when it cannot be read (restore then names the problem)."""
        step = self.manager.latest_step() if step is None else step
        try:
            return (
                self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {}
            )
        except Exception:  # noqa: BLE001 - restore() reports an unreadable checkpoint in one line
            return {}

    def restore(self, abstract_state, step=None):
        """`abstract_state`: the state's pytree of jax.ShapeDtypeStruct with target shardings."""
        step = self.manager.latest_step() if step is None else step
        where = os.path.join(self.directory, str(step))
        try:
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except (
            Exception
        ) as e:  # missing items, truncated files, another run's shapes: orbax raises many kinds
            from jaxalign.errors import CheckpointError

            lines = str(e).strip().splitlines()
            raise CheckpointError(
                f"{where}: cannot resume from this checkpoint ("
                f"{type(e).__name__}: {lines[0] if lines else 'no message'}); it is incomplete, corrupt or from "
                "another config: delete it to start over, or use another --workdir"
            ) from e
        return out["state"], out["data"], out["meta"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


TEST_KILL_ENV = "JAXALIGN_TEST_KILL_IN_SAVE_AT_STEP"


def _maybe_kill_in_save():
    """Test-only: with `JAXALIGN_TEST_KILL_IN_SAVE_AT_STEP=N` the process SIGKILLs itself in the background
    thread of the asynchronous save of step N, after its files are written and before orbax commits them
    (renames the temporary directory): the worst moment for a `kill -9`."""
    step = os.environ.get(TEST_KILL_ENV, "")
    if not step:
        return
    from orbax.checkpoint._src.path import atomicity

    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        original = cls.finalize
        if getattr(original, "_jaxalign_test_kill", False):
            continue

        async def finalize(self, *args, _original=original, **kwargs):
            final = getattr(self, "_final_path", None)
            if final is not None and os.path.basename(str(final)) == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return await _original(self, *args, **kwargs)

        finalize._jaxalign_test_kill = True
        cls.finalize = finalize


def _check_latest_step(directory):
    """CheckpointError when the newest step directory (orbax names them by step; its temporary ones have
    a suffix) lacks the state or the data position (copied in part, or made by hand) or its metadata is not
    JSON. Checked before orbax opens it, which would log warnings and errors about it and fail later."""
    steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []
    if not steps:
        return
    where = os.path.join(directory, str(max(steps)))
    missing = [item for item in ("state", "data") if not os.path.isdir(os.path.join(where, item))]
    from jaxalign.errors import CheckpointError

    if missing:
        raise CheckpointError(
            f"{where}: cannot resume from this checkpoint (no "
            f"{' or '.join(m + '/' for m in missing)} in it); it is incomplete: delete it to "
            "start over, or use another --workdir"
        )
    metadata = os.path.join(where, "_CHECKPOINT_METADATA")  # orbax reads it when it opens the directory
    if os.path.isfile(metadata):
        try:
            with open(metadata) as f:
                json.load(f)
        except ValueError as e:
            raise CheckpointError(
                f"{where}: cannot resume from this checkpoint (_CHECKPOINT_METADATA is not JSON: "
                f"{e}); it is corrupt: delete it to start over, or use another --workdir"
            ) from e


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) describing `tree`, for restoring onto the same layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
