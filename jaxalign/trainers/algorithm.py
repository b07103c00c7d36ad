"""What an RL algorithm is to the batch source (`trainers/rl.py`) and the loop: one record per algorithm.

Each RL objective's module (`ppo.py`, `grpo.py`, `online_dpo.py`) ends with `ALGORITHM = declare(__name__,
...)`,
and its `registry.Objective` names it (`algorithm="jaxalign.trainers.grpo:ALGORITHM"`): adding an RL
algorithm = a module with its loss, its advantages and this record, and one registry entry. Per-field
config checks are the registry's `checks`; `validate` holds the checks that read several fields.

`hp` below is the objective's sub-config (a ConfigDict, or its dict with the rollout's fields added).
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Callable

from jaxalign import registry


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """An RL algorithm.

    Attributes:
      name: the objective's name.
      make_loss_fn: (policy_model, value_model, hp) -> loss_fn(params, frozen, minibatch) -> (loss, metrics).
      prepare: (scored rollout, kl_coef, hp) -> (the batch the updates read, rollout metrics, next kl_coef).
      group_size: hp -> samples per prompt.
      rows_per_prompt: hp -> rows of the prepared batch per prompt.
      epochs: hp -> passes over each rollout batch.
      num_minibatches: hp -> optimiser updates per pass.
      kl_coef: hp -> the initial KL coefficient of the reward (0 = none).
      uses_reference: hp -> whether the frozen reference's log-probs are scored.
      needs_old_logprobs: hp -> whether a separate pass computes the sampling policy's log-probs.
      validate: hp -> None, raising ConfigError (checks across fields).
      critic: a value model is trained with the policy (its forward is part of scoring).
      packs: the update reads the rollout's rows (so they may be packed padding-free).
      corrects: a stale rollout's tokens are importance-weighted in the loss (`off_policy.py`).
    """

    name: str
    make_loss_fn: Callable
    prepare: Callable
    group_size: Callable
    rows_per_prompt: Callable
    epochs: Callable
    num_minibatches: Callable
    kl_coef: Callable
    uses_reference: Callable
    needs_old_logprobs: Callable
    validate: Callable = lambda hp: None
    critic: bool = False
    packs: bool = True
    corrects: bool = True

    def updates_per_step(self, hp) -> int:
        return self.epochs(hp) * self.num_minibatches(hp)


# The functions an RL module defines under these names (see `Algorithm`).
FUNCTIONS = (
    "make_loss_fn",
    "prepare",
    "group_size",
    "rows_per_prompt",
    "epochs",
    "num_minibatches",
    "kl_coef",
    "uses_reference",
    "needs_old_logprobs",
    "validate",
)


def declare(module_name: str, name: str, *, critic: bool, packs: bool, corrects: bool) -> Algorithm:
    """The record of the RL module `module_name` (call it as `declare(__name__, ...)` at its end): its
    functions named as in `FUNCTIONS` (`validate` may be left out: no cross-field checks), and the flags.
    A missing required function is a TypeError at import."""
    module = sys.modules[module_name]
    return Algorithm(
        name=name,
        critic=critic,
        packs=packs,
        corrects=corrects,
        **{f: getattr(module, f) for f in FUNCTIONS if hasattr(module, f)},
    )


def of(objective: str) -> Algorithm:
    """The record the registry names for RL objective `objective`."""
    module, name = registry.get(objective).algorithm.split(":")
    return getattr(importlib.import_module(module), name)
