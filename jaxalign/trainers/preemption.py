"""Keeping a run alive: a clean stop on SIGTERM / SIGINT, checkpoints by steps and by wall-clock time, and
non-finite updates skipped. Shared by the offline loop (`loop.py`) and the RL loop (`rl.py`).

  * SIGTERM or SIGINT (Ctrl-C): the current step finishes, every process agrees on the step to stop after,
    a checkpoint (train state, rng, data position) is written and waited for, one line is printed,
    ``preempted at step N: checkpoint saved to <dir>; rerun the same command to resume``, and the process
    exits with `EXIT_PREEMPTED` (75, sysexits' EX_TEMPFAIL: "try again"). Rerunning the same command
    resumes and repeats the uninterrupted run's losses exactly. A second signal aborts at once.
  * Checkpoints every `train.checkpoint_every` steps and every `train.checkpoint_every_minutes` minutes of
    wall-clock time (whichever comes first; all processes agree on the step), and at the end.
  * An update whose loss or gradient norm is not finite is skipped inside the jitted step (parameters and
    optimiser state unchanged: `keep_if_finite`), counted (`train/skipped_nonfinite`, cumulative, and
    `train/nonfinite_in_a_row`), and after `train.max_nonfinite_steps` such steps in a row the run halts
    with one line on stderr and `EXIT_NONFINITE` (3), without writing a checkpoint. So a checkpoint never
    holds NaN parameters.

Agreement between processes: each step's local `[stop requested, time checkpoint due]` is max-reduced over
all processes by a small jitted collective whose result is read one step later, so the host never waits
on the step it has just dispatched. On one process the local values are used directly.

Test-only: `JAXALIGN_TEST_INJECT_NAN_AT_STEPS=3,4` makes those steps' loss (and so their gradients) NaN
(`with_injected_nan`, `injected_nan_steps`); the preemption tests use it. Never set it otherwise.
"""

import os
import signal
import sys
import threading
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

EXIT_PREEMPTED = 75  # stopped by SIGTERM / SIGINT after saving a checkpoint: rerun to resume.
EXIT_NONFINITE = 3  # halted: train.max_nonfinite_steps non-finite steps in a row.

TEST_NAN_ENV = "JAXALIGN_TEST_INJECT_NAN_AT_STEPS"
# Test-only: "<step>:<phase>:<TERM|KILL>" sends this process that signal at that point of that step
# (phases: sample, score, update; a kill inside a save is orbax_state.TEST_KILL_ENV).
TEST_FAULT_ENV = "JAXALIGN_TEST_FAULT"
TEST_SIGNAL_ENV = "JAXALIGN_TEST_SIGTERM_AT_STEPS"  # test-only: the loop sends itself SIGTERM after these


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; uncaught, the process exits with code 75."""

    def __init__(self, step, directory):
        super().__init__(EXIT_PREEMPTED)
        self.step, self.directory = step, directory


class NonFiniteHalt(SystemExit):
    """Raised after `train.max_nonfinite_steps` non-finite steps in a row; uncaught, exit code 3."""

    def __init__(self, message):
        super().__init__(EXIT_NONFINITE)
        self.message = message


# ----------------------------------------------------------------------------------------------------
# Inside the jitted step.
# ----------------------------------------------------------------------------------------------------
def keep_if_finite(finite, new, old):
    """`new` where the scalar `finite` is true, else `old`, leaf by leaf (parameters and optimiser state
    stay exactly as they were when an update is skipped)."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def injected_nan_steps():
    """Test-only: the 1-based steps whose loss is made NaN (from `JAXALIGN_TEST_INJECT_NAN_AT_STEPS`)."""
    value = os.environ.get(TEST_NAN_ENV, "")
    return tuple(int(s) for s in value.split(",") if s.strip())


def nan_factor(step, steps):
    """NaN at the (traced, 1-based) `step` if it is one of `steps`, else 1."""
    return jnp.where(jnp.isin(step, jnp.asarray(steps, jnp.int32)), jnp.nan, 1.0).astype(jnp.float32)


def with_injected_nan(loss_fn, step, steps):
    """Test-only: `loss_fn` whose loss is multiplied by NaN at `steps` (so its gradients are NaN too)."""
    if not steps:
        return loss_fn
    factor = nan_factor(step, steps)

    def poisoned(*args):
        loss, aux = loss_fn(*args)
        return loss * factor, aux

    return poisoned


# ----------------------------------------------------------------------------------------------------
# On the host.
# ----------------------------------------------------------------------------------------------------
class Decision(NamedTuple):
    save: bool  # write a checkpoint after this step (by steps, by time, or to stop)
    stop: bool  # preempted: save, wait and exit after this step


def _reducer():
    """A jitted max over all processes of each process's small int vector; returns (put, reduce)."""
    devices = np.asarray(jax.devices())
    mesh = jax.sharding.Mesh(devices, ("p",))
    spread = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("p"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    reduce = jax.jit(lambda x: jnp.max(x, axis=0), out_shardings=replicated)

    def vote(local):
        local = np.tile(np.asarray(local, np.int32)[None], (jax.local_device_count(), 1))
        return reduce(jax.make_array_from_process_local_data(spread, local, (len(devices), local.shape[1])))

    return vote


class Guard:
    """The host side: signal handlers, the per-step save / stop decision, the non-finite counters.

      guard = Guard(config.train, meta=restored_meta)      # installs SIGTERM / SIGINT handlers
      try:
        for step in ...:
          state, metrics = step_fn(...)
          decision = guard.after_step(step, metrics["nonfinite"])
          ...                                               # log with guard.counts()
          if decision.save: guard.save(ckpt, step, state, data_state, meta)
          if decision.stop: guard.stop(ckpt, step)          # raises Preempted
      finally:
        guard.close()

    `agree`: reduce the decisions over processes (default: when there are several).
    """

    def __init__(self, train_config, meta=None, agree=None, is_chief=None):
        self.every = int(train_config.checkpoint_every)
        self.seconds = float(train_config.checkpoint_every_minutes) * 60.0
        self.max_nonfinite = int(train_config.max_nonfinite_steps)
        meta = meta or {}
        self.skipped = int(meta.get("skipped_nonfinite", 0))
        self.in_a_row = int(meta.get("nonfinite_in_a_row", 0))
        self.is_chief = jax.process_index() == 0 if is_chief is None else is_chief
        self._agree = jax.process_count() > 1 if agree is None else agree
        self._vote = _reducer() if self._agree else None
        self._pending_vote = None
        self._flags = []  # [(step, device scalar: fraction of the step's updates skipped)]
        self._last_save = time.monotonic()
        self._last_saved_step = None
        self.signal = None  # the first signal received
        self._test_signal_steps = {
            int(s) for s in os.environ.get(TEST_SIGNAL_ENV, "").split(",") if s.strip()
        }
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        else:
            logging.warning("not in the main thread: SIGTERM / SIGINT will not stop the run cleanly")

    def _handle(self, signum, frame):
        if self.signal is not None:  # the second signal: abort now, as without a handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal = signum
        print(
            f"received {signal.Signals(signum).name}: stopping after this step with a checkpoint "
            f"(send it again to abort without one)",
            file=sys.stderr,
            flush=True,
        )

    def close(self):
        """Restores the previous signal handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    # -- non-finite steps ------------------------------------------------------------------------------
    def _read_flags(self, keep):
        """Counts the tracked steps' flags except the last `keep` (still running); raises NonFiniteHalt."""
        ready, self._flags = self._flags[: len(self._flags) - keep], self._flags[len(self._flags) - keep :]
        for step, flag in ready:
            if float(np.asarray(flag)) > 0:
                self.skipped += 1
                self.in_a_row += 1
            else:
                self.in_a_row = 0
            if self.max_nonfinite and self.in_a_row >= self.max_nonfinite:
                message = (
                    f"error: training halted at step {step}: {self.in_a_row} steps in a row had a non-finite "
                    f"loss or gradient and were skipped (train.max_nonfinite_steps={self.max_nonfinite}); "
                    f"the checkpoints hold finite parameters. Lower optimizer.learning_rate, check the data "
                    f"of steps {step - self.in_a_row + 1}-{step}, or use float32"
                )
                if self.is_chief:
                    print(message, file=sys.stderr, flush=True)
                raise NonFiniteHalt(message)

    def counts(self):
        """Reads every tracked step (blocks until they are done): the metrics to log with the train ones."""
        self._read_flags(0)
        return {"skipped_nonfinite": float(self.skipped), "nonfinite_in_a_row": float(self.in_a_row)}

    # -- the per-step decision -------------------------------------------------------------------------
    def after_step(self, step, nonfinite):
        """Call after dispatching step `step`; `nonfinite` is its device flag (> 0: the update was skipped).
        Reads the previous steps' flags (which may raise NonFiniteHalt) and decides save / stop."""
        if step in self._test_signal_steps:
            os.kill(os.getpid(), signal.SIGTERM)
        self._flags.append((step, nonfinite))
        self._read_flags(1)
        local = (
            int(self.signal is not None),
            int(self.seconds > 0 and time.monotonic() - self._last_save >= self.seconds),
        )
        if self._agree:  # this step's vote is read at the next step: every process reads the same
            previous, self._pending_vote = self._pending_vote, self._vote(local)
            # replicated over all processes' devices: read this process's copy
            stop, due = (
                (int(v) for v in np.asarray(previous.addressable_data(0))) if previous is not None else (0, 0)
            )
        else:
            stop, due = local
        periodic = self.every > 0 and step % self.every == 0
        return Decision(save=bool(periodic or due or stop), stop=bool(stop))

    def save(self, ckpt, step, state, data_state, meta):
        """Writes checkpoint `step` (asynchronously) with the non-finite counters in its metadata; once."""
        if ckpt is None or self._last_saved_step == step:
            return
        ckpt.save(step, state, data_state, {**meta, **self.counts()})
        self._last_saved_step = step
        self._last_save = time.monotonic()

    def stop(self, ckpt, step):
        """After the preemption checkpoint of `step` was saved: waits for it, prints, raises Preempted."""
        if ckpt is not None:
            ckpt.wait()
            where = f"checkpoint saved to {ckpt.directory}; rerun the same command to resume"
        else:
            where = "no workdir, so no checkpoint"
        if self.is_chief:
            print(f"preempted at step {step}: {where}", flush=True)
        raise Preempted(step, ckpt.directory if ckpt is not None else None)


def fault_point(step, phase):
    """Test-only (`TEST_FAULT_ENV`): a SIGTERM or SIGKILL to this process at `phase` of `step` (an int, or
    a function giving it: read only when the variable is set), to test that a run stopped anywhere resumes
    to the uninterrupted run's numbers. Nothing without the variable."""
    spec = os.environ.get(TEST_FAULT_ENV, "")
    if not spec:
        return
    at, where, sig = spec.split(":")
    if where == phase and int(at) == int(step() if callable(step) else step):
        os.kill(os.getpid(), signal.SIGKILL if sig == "KILL" else signal.SIGTERM)
