"""Off-policy overlap (`rollout.max_staleness` = k > 0): the rollouts sampled ahead of the update that reads
them, their importance correction in the loss, and their place in checkpoints.

With k > 0 the batch source (`trainers/rl.py`) keeps up to k rollouts in flight: at step t it takes the
oldest (sampled by the parameters of step t - k, or fewer steps back at the start), then launches the
next one from the parameters of step t before the update of step t is dispatched. The device runs that
sampling while the host decodes and scores the rollout it took, and the update follows; so the host's
work (detokenising, the Python reward, packing) overlaps the device's, and the device never waits for
it. Each token's policy-gradient term is then weighed by `losses.importance_weights` (π_old / μ:
truncated IS or IcePop masking), logged as `off_policy/*`, with `rollout/staleness` the steps between the
sampling parameters and the update.

A checkpoint holds the rollouts in flight (`encode` / `decode`, in the batch source's JSON state): a run
preempted mid-overlap resumes with the very rollouts it had sampled, so it loses none and follows the same
losses as a run never stopped.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Optional

import numpy as np

from jaxalign import hosts, losses


def off_policy_weights(old_logprobs, mb, hp):
    """A stale rollout's importance correction (`losses.importance_weights`, `rollout.is_correction`) from
    π_old (the update's proximal policy) and the sampler's `behaviour_logprobs`: ([B, T] weights, metrics).
    (None, {}) for a rollout sampled by the parameters being trained (no `behaviour_logprobs`)."""
    if "behaviour_logprobs" not in mb:
        return None, {}
    return losses.importance_weights(
        old_logprobs,
        mb["behaviour_logprobs"],
        mb["mask"],
        kind=hp["is_correction"],
        cap=float(hp["is_cap"]),
        band=tuple(float(b) for b in hp["is_band"]),
    )


@dataclasses.dataclass
class InFlight:
    """A rollout sampled ahead of its update.

    rollout: the sampler's global device arrays (prompt_ids, prompt_segment_ids, tokens, mask and, for
      the corrected objectives, behaviour_logprobs).
    answers: this host's reference answers of the rows (None once `collected`).
    step: the train state's step whose parameters sampled it.
    gathered: numpy (prompt_ids, prompt_segment_ids, tokens, mask) with every row, once gathered.
    host: this host's rows of the Python scores (`rl.host_scores`), once computed; num_tokens with it.
    """

    rollout: dict
    answers: Optional[list]
    step: int
    gathered: Optional[tuple] = None
    host: Optional[dict] = None
    num_tokens: int = 0
    metrics: dict = dataclasses.field(default_factory=dict)  # host-side metrics (multi-turn episodes)


def _pack_array(x):
    x = np.ascontiguousarray(x)
    return {"dtype": x.dtype.str, "shape": list(x.shape), "data": base64.b64encode(x.tobytes()).decode()}


def _unpack_array(d):
    return np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


GATHERED = ("prompt_ids", "prompt_segment_ids", "tokens", "mask")


def encode(item: InFlight, batch_sharding) -> dict:
    """A collected in-flight rollout -> JSON (the same on every host): every row of every array, exactly."""
    gathered, host, num_tokens = item.gathered, item.host, item.num_tokens
    rest = {k: v for k, v in item.rollout.items() if k not in GATHERED}
    arrays = {**dict(zip(GATHERED, gathered)), **hosts.gather(rest)}
    host_rows = hosts.gather(hosts.to_global(host, batch_sharding)) if host else {}
    return {
        "step": int(item.step),
        "num_tokens": int(num_tokens),
        "arrays": {k: _pack_array(v) for k, v in arrays.items()},
        "host": {k: _pack_array(v) for k, v in host_rows.items()},
    }


def decode(d: dict, batch_sharding) -> InFlight:
    """`encode`'s JSON -> the collected InFlight, its arrays back on the batch sharding."""
    arrays = {k: _unpack_array(v) for k, v in d["arrays"].items()}
    rollout = {k: hosts.to_global(hosts.local_rows(v), batch_sharding) for k, v in arrays.items()}
    host = {k: hosts.local_rows(_unpack_array(v)) for k, v in d["host"].items()}
    gathered = tuple(arrays[k] for k in GATHERED)
    return InFlight(rollout, None, int(d["step"]), gathered, host, int(d["num_tokens"]))


def describe(config) -> str:
    """The start-up line's words for the overlap (empty when on-policy)."""
    r = config.rollout
    k = int(r.get("max_staleness", 0))
    if not k:
        return ""
    kind = r.get("is_correction", "tis")
    how = {"tis": f"truncated IS, C={r.is_cap}", "icepop": f"IcePop, band {tuple(r.is_band)}", "none": "none"}
    return (
        f"; sampling {k} step{'s' if k > 1 else ''} ahead of the update (importance correction: {how[kind]})"
    )
