"""Multi-host start-up: one program per host, JAX's multi-controller runtime."""

import os

import jax
from absl import logging

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
