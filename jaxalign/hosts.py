"""Host ↔ device plumbing, one copy for the trainers, RL, evaluation and the data passes.

JAX runs one program per host. Each host reads its own contiguous slice of every global batch (the data
iterator's layout: host h holds rows [h·B/H, (h+1)·B/H)); these functions turn such slices into global
arrays sharded over the batch axes and back.

    hosts.maybe_initialize(config.distributed)       # jax.distributed when the environment says so
    arrays = hosts.to_global(batch, batch_sharding)  # this host's numpy rows -> global jax arrays
    rows = hosts.gather(arrays)                      # global arrays -> numpy with every row, every host
    mine = hosts.local_rows(rows)                    # ... -> this host's slice again
    totals = hosts.sum_over_hosts(np.array([...]))   # host-side sums, added over hosts
"""

import os

import jax
import numpy as np
from absl import logging

# Keys of data batches that stay on the host (answers for reward functions, row weights).
HOST_KEYS = ("answer", "weight")

# Environment variables that mean "this is one process of several" (TPU pods, SLURM, explicit).
_MULTI_HOST_ENV = ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "JAX_COORDINATOR_ADDRESS")


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
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


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
