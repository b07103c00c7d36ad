"""The train state: a plain pytree that jit donates, orbax saves and shardings describe."""

from typing import Any, NamedTuple

import jax


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimiser updates done.
    params: Any  # trainable parameters (float32 master weights).
    opt_state: Any
    rng: jax.Array  # PRNG key data (uint32), split once per step.
