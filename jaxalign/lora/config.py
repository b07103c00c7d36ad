"""LoraConfig: which projections get low-rank adapters, their rank, scale, dropout and initialisation.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") replaces a frozen
projection y = x W by

    y = x W + scale · dropout(x) A B,      A [in, r], B [r, out],   scale = alpha / r

(rsLoRA, Kalajdzievski 2023: scale = alpha / sqrt(r)). B starts at zero, so the adapted model starts
equal to the base model.

Target patterns are matched against module paths such as "layers_0/attn/q_proj" (the parameter path
without its "/kernel"; a ScalarHeadModel adds a leading "transformer/"):
  * a bare name ("q_proj") matches the last path component, as PEFT's `target_modules` list does;
  * otherwise an fnmatch pattern over the whole path ("*/mlp/*", "layers_[0-3]/attn/?_proj"), also
    tried against the path + "/kernel" so parameter-style patterns work;
  * a pattern starting with "re:" is a regular expression that must match the whole path.
With `scan_layers` the stacked module path is "layers/attn/q_proj"; patterns are checked against every
per-layer name "layers_{i}/..." and must select all layers or none (a stacked kernel has one adapter).

`modules_to_save` (PEFT's option of the same name) uses the same patterns over module paths ("score",
"transformer/final_norm"): each selected module is trained in full. The adapter tree then holds a float32
copy of its parameters ({"score": {"kernel": [D, 1]}}), which replaces the base's in the forward and in
`merge_lora`. A reward model or critic needs its freshly initialised score head trained this way, so
None (the default) means the score head of a scalar-head model, as PEFT's SEQ_CLS task does, and
nothing for a causal LM.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Any, Sequence

# The projections of a Llama-family block: attention q/k/v/o and the gated MLP.
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_PROJECTIONS = ATTENTION_MODULES + MLP_MODULES
INITS = ("kaiming", "gaussian")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Adapter hyper-parameters (hashable: safe to close over in jitted code).

    rank: r >= 1, the inner dimension of A [in, r] and B [r, out].
    alpha: scale numerator; scale = alpha / r (or alpha / sqrt(r) with use_rslora).
    dropout: probability in [0, 1) of zeroing an input of the low-rank branch (PEFT's lora_dropout).
      Applied only when an rng is passed to the forward (training); otherwise the forward is
      deterministic.
    target_modules: patterns selecting projections (see module docstring). Default: q/k/v/o and
      gate/up/down in every layer.
    use_rslora: rank-stabilised scale alpha / sqrt(r).
    init: A's initialisation, as PEFT's `init_lora_weights`: "kaiming" (True in PEFT: kaiming-uniform
      with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))) or "gaussian" (N(0, 1/r)). B is always zero.
    modules_to_save: patterns selecting modules trained in full (see module docstring); None = the
      score head of a scalar-head model (nothing for a causal LM); () = none.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ALL_PROJECTIONS
    use_rslora: bool = False
    init: str = "kaiming"
    modules_to_save: tuple[str, ...] | None = None

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", (self.target_modules,))
        else:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if isinstance(self.modules_to_save, str):
            object.__setattr__(self, "modules_to_save", (self.modules_to_save,))
        elif self.modules_to_save is not None:
            object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))
        if int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"lora rank={self.rank!r} must be an integer >= 1")
        if self.alpha <= 0:
            raise ValueError(f"lora alpha={self.alpha!r} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout={self.dropout!r} must be in [0, 1)")
        if not self.target_modules:
            raise ValueError("lora target_modules is empty: name at least one projection")
        if self.init not in INITS:
            raise ValueError(f"lora init={self.init!r} must be one of {INITS}")
        for p in self.target_modules + (self.modules_to_save or ()):
            if p.startswith("re:"):
                re.compile(p[3:])  # fail early on a malformed regex

    @property
    def scale(self) -> float:
        return self.alpha / (self.rank**0.5 if self.use_rslora else self.rank)

    def replace(self, **changes) -> "LoraConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoraConfig":
        """From a plain dict (e.g. `config.lora.to_dict()` minus non-LoRA keys); unknown keys raise."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown LoRA option(s) {unknown}; known: {sorted(fields)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        if self.modules_to_save is not None:
            d["modules_to_save"] = list(self.modules_to_save)
        return d


def _match_one(pattern: str, path: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], path) is not None
    if "/" not in pattern and not any(c in pattern for c in "*?["):
        return path.rsplit("/", 1)[-1] == pattern
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path + "/kernel", pattern)


def matches(patterns: Sequence[str], path: str) -> bool:
    """Whether a module path ("layers_0/attn/q_proj") is selected by any of the patterns."""
    return any(_match_one(p, path) for p in patterns)
