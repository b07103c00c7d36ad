"""Host ↔ device plumbing, one copy for the trainers, RL, evaluation and the data passes.

JAX runs one program per host. Each host reads its own contiguous slice of every global batch (the data
iterator's layout: host h holds rows [h·B/H, (h+1)·B/H)); these functions turn such slices into global
arrays sharded over the batch axes and back.

    hosts.maybe_initialize(config.distributed)       # jax.distributed when the environment says so
    arrays = hosts.to_global(batch, batch_sharding)  # this host's numpy rows -> global jax arrays
    rows = hosts.gather(arrays)                      # global arrays -> numpy with every row, every host
    mine = hosts.local_rows(rows)                    # ... -> this host's slice again
    totals = hosts.sum_over_hosts(np.array([...]))   # host-side sums, added over hosts
    with hosts.exit_if_a_peer_is_lost(workdir): ...  # a dead process: one line and exit 69, not a hang

A process that dies (killed, out of memory, machine lost) takes the run down with it: the others cannot
continue. What JAX 0.10 (gloo collectives on CPU, the coordination service) does then, and what we add:

  * A collective that talks to the dead process fails at once (``JaxRuntimeError: Gloo AllGather failed:
    ... Connection reset by peer``); a process blocked in a collective with live peers only waits.
    `exit_if_a_peer_is_lost` (around the trainer in `jaxalign.main`) turns such an error into one line,
    ``error: process I of N lost contact with another process (<why>); the run cannot continue: restart
    all processes ...``, and leaves with `EXIT_LOST_PEER` through ``os._exit``: a normal exit would run
    jax's atexit ``distributed.shutdown``, which waits at a barrier for the dead process until the
    heartbeat timeout and then aborts. Leaving at once also closes this process's connections, so the
    processes waiting on it fail in turn: every survivor exits within a second or so (tested with 4
    processes). One race remains: when process 0, which hosts the coordination service, exits, a process
    still waiting on it may be aborted by jax's client (below) before its collective error reaches Python.
  * A process waiting in the coordination service instead (orbax's barrier after an asynchronous
    checkpoint write) learns of the death only at the heartbeat timeout; the barrier's error then gives
    the same line, racing with the abort below.
  * The coordination service declares a process dead when its heartbeats stop for
    ``config.distributed.heartbeat_timeout_seconds`` (`HEARTBEAT_TIMEOUT_SECONDS` when the field is absent;
    jax's default is 100 s) and then terminates every other process from a C++ thread (LOG(FATAL):
    ``Terminating process because the JAX distributed service detected fatal errors. This most likely
    indicates that another task died``, SIGABRT, exit status -6 / 134). Python cannot catch that (jaxlib's
    ``missed_heartbeat_callback`` aborts with std::bad_cast when given a Python function), so it is only
    the backstop for a process that hangs or whose machine vanishes without closing its connections.
"""

import contextlib
import os
import re
import sys

import jax
import numpy as np
from absl import logging

# Keys of data batches that stay on the host (answers for reward functions, row weights).
HOST_KEYS = ("answer", "weight")

# Environment variables that mean "this is one process of several" (TPU pods, SLURM, explicit).
_MULTI_HOST_ENV = ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "JAX_COORDINATOR_ADDRESS")

# Seconds without heartbeats after which the coordination service declares a process dead and stops the
# others (jax's default, 100 s, leaves the survivors idle that long). Heartbeats come from a C++ thread, so
# long compiles or host work do not delay them. `config.distributed.heartbeat_timeout_seconds` overrides.
HEARTBEAT_TIMEOUT_SECONDS = 30

EXIT_LOST_PEER = 69  # sysexits' EX_UNAVAILABLE: another process died; restart all of them to resume.


def maybe_initialize(cfg):
    """Calls `jax.distributed.initialize()` when `cfg.initialize` is yes, or auto and the env says so."""
    mode = str(cfg.initialize).lower()
    if mode in ("no", "false", "0"):
        return
    explicit = bool(cfg.coordinator_address)
    if mode == "auto" and not explicit and not any(os.environ.get(k) for k in _MULTI_HOST_ENV):
        return
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    if explicit:
        kwargs = dict(
            coordinator_address=cfg.coordinator_address,
            num_processes=cfg.num_processes,
            process_id=cfg.process_id,
        )
    heartbeat = int(cfg.get("heartbeat_timeout_seconds", 0) or HEARTBEAT_TIMEOUT_SECONDS)
    jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=heartbeat)
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


# What a collective or the coordination service says when another process has gone away.
_LOST_PEER = re.compile(
    r"Gloo|Connection (reset|closed|refused)|Broken pipe|Socket closed|heartbeat|coordination service",
    re.IGNORECASE,
)


def lost_peer(exc):
    """The message of `exc` (or of an exception it was raised from) when it says that another process of a
    multi-process run has gone away; else None."""
    if not jax.distributed.is_initialized():
        return None
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, jax.errors.JaxRuntimeError) and _LOST_PEER.search(str(exc)):
            return str(exc)
        exc = exc.__cause__ or exc.__context__
    return None


def last_checkpoint(workdir):
    """`<workdir>/checkpoints/<latest step>`, or None when there is none."""
    directory = os.path.join(workdir or "", "checkpoints")
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
    return os.path.join(os.path.abspath(directory), str(max(steps))) if steps else None


def lost_peer_message(why, workdir):
    """The one line for a process that lost contact with another: which process, why (the first line of
    the runtime's message) and where the rerun resumes."""
    first = re.sub(r"\s+", " ", str(why).strip().splitlines()[0] if str(why).strip() else "")
    first = first if len(first) <= 200 else first[:197] + "..."
    ckpt = last_checkpoint(workdir)
    resume = (
        f"to resume from the last checkpoint, {ckpt}"
        if ckpt
        else "(no checkpoint was written yet: the run starts again from step 0)"
    )
    return (
        f"process {jax.process_index()} of {jax.process_count()} lost contact with another process ({first}); "
        f"the run cannot continue: restart all processes with the same command {resume}"
    )


@contextlib.contextmanager
def exit_if_a_peer_is_lost(workdir=""):
    """Around a multi-process program: an error saying another process has gone away ends this one with
    ``error: <lost_peer_message>`` on stderr and `EXIT_LOST_PEER`, through ``os._exit`` (see the module
    docstring for why). Any other exception passes through."""
    try:
        yield
    except Exception as e:
        why = lost_peer(e)
        if why is None:
            raise
        from jaxalign.errors import verbose

        if verbose():
            import traceback

            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.write(f"error: {lost_peer_message(why, workdir)}\n")
        sys.stderr.flush()
        os._exit(EXIT_LOST_PEER)


def to_global(batch, batch_sharding):
    """This host's rows -> global jax arrays sharded over the batch axes. A dict drops `HOST_KEYS`; an
    array is converted alone."""
    if not isinstance(batch, dict):
        return jax.make_array_from_process_local_data(batch_sharding, np.asarray(batch))
    return {
        k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
        for k, v in batch.items()
        if k not in HOST_KEYS
    }


def gather(tree):
    """Global (batch-sharded) arrays -> numpy with every row, on every host."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def local_rows(x):
    """This host's contiguous slice of a global [R, ...] numpy array (the data iterator's layout)."""
    per = x.shape[0] // jax.process_count()
    return x[jax.process_index() * per : (jax.process_index() + 1) * per]


def sum_over_hosts(x):
    """A host-side numpy array summed over all hosts (every host gets the sum)."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x)).reshape((-1,) + x.shape).sum(0)


def all_hosts(flag):
    """True only if `flag` is true on every host."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.min(sum_over_hosts(np.int32(not flag)) == 0))


def batch_shards(mesh_shape):
    """Ways the batch is split: data × fsdp, from a mesh or a (data, fsdp, tensor) shape."""
    if hasattr(mesh_shape, "shape"):
        return mesh_shape.shape["data"] * mesh_shape.shape["fsdp"]
    return mesh_shape[0] * mesh_shape[1]


def row_multiple(mesh):
    """Batch shards per host: every host's batch rows must divide among its share of (data, fsdp)."""
    return max(batch_shards(mesh) // jax.process_count(), 1)


def mean_metrics(records):
    """[{name: scalar}] -> {name: float mean over the records}."""
    return {k: float(np.mean([r[k] for r in records])) for k in records[0]}
