"""The objectives jaxalign trains: one record each, the one table every part reads.

    from jaxalign import registry
    spec = registry.get("dpo")      # Objective(name="dpo", data="preference", head="lm", reference=True, ...)

`main` picks the trainer from it, `jaxalign/defaults.py` the padding-free default, validation the config
checks and what packing allows, `trainers/setup.py` the dataset kind, the head and whether a frozen
reference exists, `trainers/step.py` the loss builder, `data/inspect.py` the dataset kind, the pipeline
the trainer, and `trainers/loop.py` which module builds its run (`SOURCES`). Adding an offline objective = a loss in `losses/`, its glue
`make_<name>_loss(model, hp)` in `trainers/objectives.py`, and one entry here.

This module imports nothing heavy (no JAX): configs and the data inspector read it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

# trainer -> "module:function(config, workdir)" that runs a config of that objective: the one training
# loop for offline and RL objectives alike, the evaluator for "eval".
TRAINERS = {
    "offline": "jaxalign.trainers.loop:train_and_evaluate",
    "rl": "jaxalign.trainers.loop:train_and_evaluate",
    "eval": "jaxalign.eval.run:evaluate_and_report",
}

# trainer -> the module whose `validate(config, num_devices, process_count)` and `build_run(config, mesh)`
# give the loop its run: the loss, the batch source (data, or sample → score → advantages) and the
# evaluator.
SOURCES = {
    "offline": "jaxalign.trainers.setup",
    "rl": "jaxalign.trainers.rl",
}


@dataclasses.dataclass(frozen=True)
class Check:
    """A config check of one field of the objective's sub-config: `ok(value)` or the run stops with
    ``config.<objective>.<field>=<value>: <why>`` (`why` may be a function giving the text). `optional`:
    a missing field is not checked."""

    field: str
    ok: Callable[[object], bool]
    why: str | Callable[[], str]
    optional: bool = False

    def message(self) -> str:
        return self.why() if callable(self.why) else self.why


@dataclasses.dataclass(frozen=True)
class Objective:
    """What one objective is, for every part of jaxalign that needs to know.

    Attributes:
      name: the config's ``objective`` (and the name of its sub-config).
      trainer: where its batches come from: "offline" (a data set), "rl" (sample, score, advantages from
        the policy being trained), or "eval" (no training).
      data: the dataset kind of its batches ("clm", "sft", "preference", "kto", "prompt"; "" for eval).
      head: "lm" (next-token logits) or "score" (a scalar per token, reward models).
      reference: a frozen reference policy is part of the loss (precomputable when `precompute_ref`).
      packing: padding-free batches by default (`data.packing`); `packable`: allowed at all.
      accumulate_packed: padding-free batches may be split into `train.grad_accum_steps` micro-batches.
      loss: name of the loss builder in `jaxalign.trainers.objectives` (offline objectives).
      reference_fn: name of the builder there of the reference log-probs that `precompute_ref` puts in
        the data ("" = cannot be precomputed).
      checks: the sub-config's value checks.
      algorithm: RL objectives: "module:NAME" of its `trainers.algorithm.Algorithm` record (loss builder,
        advantages, group size, epochs, minibatches, critic, ...).
    """

    name: str
    trainer: str = "offline"
    data: str = ""
    head: str = "lm"
    reference: bool = False
    packing: bool = False
    packable: bool = False
    accumulate_packed: bool = False
    loss: str = ""
    reference_fn: str = ""
    checks: tuple[Check, ...] = ()
    algorithm: str = ""


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _dpo_loss_types() -> tuple[str, ...]:
    from jaxalign import losses  # the loss table is the source of truth (imported only when checked)

    return tuple(losses.DPO_LOSS_TYPES)


_BETA = Check("beta", _positive, "must be > 0")
# DPO's checks, offline and online alike.
_DPO = (
    _BETA,
    Check(
        "loss_type", lambda v: v in _dpo_loss_types(), lambda: f"expected one of {list(_dpo_loss_types())}"
    ),
    Check("label_smoothing", lambda v: 0.0 <= v < 0.5, "must be in [0, 0.5)"),
    Check("dpop_lambda", _non_negative, "must be >= 0", optional=True),
)
_POSITIVE_INT = "must be >= 1"


def _at_least_one(v) -> bool:
    return v >= 1


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            "clm",
            data="clm",
            packable=True,
            accumulate_packed=True,
            loss="make_clm_loss",
            checks=(Check("z_loss", _non_negative, "must be >= 0", optional=True),),
        ),
        Objective(
            "sft", data="sft", packing=True, packable=True, accumulate_packed=True, loss="make_sft_loss"
        ),
        Objective(
            "reward",
            data="preference",
            head="score",
            packing=True,
            packable=True,
            loss="make_reward_loss",
            checks=(Check("center_coef", _non_negative, "must be >= 0", optional=True),),
        ),
        Objective(
            "dpo",
            data="preference",
            reference=True,
            packing=True,
            packable=True,
            loss="make_dpo_loss",
            reference_fn="make_dpo_reference",
            checks=_DPO + (Check("rpo_alpha", _non_negative, "must be >= 0"),),
        ),
        Objective(
            "orpo", data="preference", packing=True, packable=True, loss="make_orpo_loss", checks=(_BETA,)
        ),
        Objective(
            "simpo",
            data="preference",
            packing=True,
            packable=True,
            loss="make_simpo_loss",
            checks=(_BETA, Check("gamma", _non_negative, "must be >= 0 (the target reward margin)")),
        ),
        Objective(
            "kto",
            data="kto",
            reference=True,
            packing=True,
            packable=True,
            loss="make_kto_loss",
            reference_fn="make_kto_reference",
            checks=(
                _BETA,
                Check("desirable_weight", _positive, "must be > 0"),
                Check("undesirable_weight", _positive, "must be > 0"),
            ),
        ),
        Objective(
            "ppo", trainer="rl", data="prompt", reference=True, algorithm="jaxalign.trainers.ppo:ALGORITHM"
        ),
        Objective(
            "grpo",
            trainer="rl",
            data="prompt",
            reference=True,
            algorithm="jaxalign.trainers.grpo:ALGORITHM",
            checks=(
                Check("group_size", lambda v: v >= 2, "must be >= 2 (advantages are relative to the group)"),
                Check("beta", _non_negative, "must be >= 0"),
                Check("clip_eps", _positive, "must be > 0"),
                Check("num_iterations", _at_least_one, _POSITIVE_INT),
                Check("num_minibatches", _at_least_one, _POSITIVE_INT),
                Check("sapo_temperature_pos", _positive, "must be > 0"),
                Check("sapo_temperature_neg", _positive, "must be > 0"),
            ),
        ),
        Objective(
            "online_dpo",
            trainer="rl",
            data="prompt",
            reference=True,
            algorithm="jaxalign.trainers.online_dpo:ALGORITHM",
            checks=_DPO
            + (
                Check("n", lambda v: v >= 2, "must be >= 2 (a pair needs two answers to the same prompt)"),
                Check("min_margin", _non_negative, "must be >= 0"),
                Check("epochs", _at_least_one, _POSITIVE_INT),
                Check("num_minibatches", _at_least_one, _POSITIVE_INT),
            ),
        ),
        Objective("eval", trainer="eval"),
    )
}


def get(name: str) -> Objective:
    """The record of objective `name`; KeyError names the known ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}") from None


def names(trainer: str | None = None) -> list[str]:
    """The objective names (of one trainer), sorted."""
    return sorted(n for n, o in OBJECTIVES.items() if trainer is None or o.trainer == trainer)
