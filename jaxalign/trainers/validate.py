"""Config validation, run once before anything is loaded or compiled. Every error names its field."""

import math
import os
import re

from jaxalign import hosts, registry
from jaxalign.errors import ConfigError, check_path, config_fail  # noqa: F401  (ConfigError re-exported)


_fail = config_fail
_check_path = check_path


def validate(config, num_devices, process_count=1):
    """Raises ConfigError on the first bad field. Returns the resolved mesh shape (data, fsdp, tensor)."""
    offline = registry.names("offline")
    if config.objective not in offline:
        _fail("objective", config.objective, f"unknown objective; expected one of {offline}")
    check_objective(config)
    reject_other_objectives(config, offline)
    if config.mesh.get("rollout_devices", 0):
        _fail(
            "mesh.rollout_devices",
            config.mesh.rollout_devices,
            f"sets devices aside for RL's sampler; {config.objective} samples nothing: leave it 0",
        )
    return validate_common(config, num_devices, process_count)


def check_objective(config):
    """The objective's own sub-config checks, from its `registry.Objective.checks`."""
    obj = config.objective
    checks = registry.get(obj).checks
    hp = config.get(obj)
    if hp is None:
        if any(not c.optional for c in checks):
            _fail(obj, None, "missing sub-config")
        return
    for c in checks:
        if c.field not in hp:
            if not c.optional:
                _fail(f"{obj}.{c.field}", None, "is missing")
            continue
        if not c.ok(hp[c.field]):
            _fail(f"{obj}.{c.field}", hp[c.field], c.message())


def reject_other_objectives(config, known):
    """Sub-configs of other objectives do not apply: refuse them instead of silently ignoring them."""
    for other in known:
        if other != config.objective and other in config:
            _fail(other, "...", f"does not apply to objective {config.objective!r}; remove it")


def _check_target_patterns(field, targets):
    """Adapter target patterns (LoRA's syntax): plain names must be projections, regexes must compile."""
    from jaxalign.lora.config import ALL_PROJECTIONS

    for t in targets:
        plain = not t.startswith("re:") and "/" not in t and not any(c in t for c in "*?[")
        if plain and t not in ALL_PROJECTIONS:
            several = f" (several: --config.{field}=\"('q_proj', 'v_proj')\")" if "," in t else ""
            _fail(
                field,
                targets,
                f"unknown module {t!r}; expected names from "
                f"{', '.join(ALL_PROJECTIONS)}, a path pattern with / or *, or 're:<regex>'{several}",
            )
        if t.startswith("re:"):
            try:
                re.compile(t[3:])
            except re.error as e:
                _fail(field, targets, f"{t!r} is not a regular expression ({e})")


def _check_adapters(config, spec):
    """`config.adapters`: kind in {lora, bottleneck}; for bottleneck adapters their size, targets, init,
    and that they apply (not with lora.enabled, not to reward models)."""
    ad = config.adapters
    if ad.kind not in ("lora", "bottleneck"):
        _fail("adapters.kind", ad.kind, "expected lora (LoRA when lora.enabled) or bottleneck")
    if ad.kind != "bottleneck":
        return
    lo = config.get("lora")
    if lo is not None and lo.enabled:
        _fail(
            "adapters.kind",
            ad.kind,
            "bottleneck adapters and LoRA are exclusive: set lora.enabled=False or adapters.kind=lora",
        )
    dim = ad.bottleneck_dim
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        _fail("adapters.bottleneck_dim", dim, "must be an integer >= 1")
    if not (ad.init_std > 0 and math.isfinite(ad.init_std)):
        _fail("adapters.init_std", ad.init_std, "must be a finite number > 0")
    targets = (ad.targets,) if isinstance(ad.targets, str) else tuple(ad.targets)
    if not targets:
        _fail("adapters.targets", targets, "is empty: name at least one projection")
    _check_target_patterns("adapters.targets", targets)
    if spec.head == "score":
        _fail(
            "adapters.kind", ad.kind, "bottleneck reward models are not supported (the score head must train)"
        )


def _check_lora(lo):
    """`config.lora` (enabled): every field, and target modules that name projections that exist."""
    from jaxalign import lora

    targets = tuple(lo.target_modules)
    _check_target_patterns("lora.target_modules", targets)
    try:
        lora.LoraConfig.from_dict(
            {
                k: (tuple(targets) if k == "target_modules" else v)
                for k, v in lo.to_dict().items()
                if k != "enabled"
            }
        )
    except (ValueError, TypeError) as e:
        m = re.match(r"lora (\w+)=\S+ (.*)", str(e))
        if m and m.group(1) in lo:
            _fail(f"lora.{m.group(1)}", lo[m.group(1)], m.group(2))
        _fail("lora", "...", str(e))


def validate_common(config, num_devices, process_count=1):
    """The fields every run has: model, data, optimizer, train, mesh. Returns the mesh shape."""
    obj = config.objective
    m = config.model
    if m.path:
        _check_path("model.path", m.path)
        if not os.path.isdir(os.path.expanduser(m.path)):  # the loader reads local directories only
            _fail(
                "model.path",
                m.path,
                "no such directory; expected a local Hugging Face model directory "
                "(config.json + model.safetensors; download hub models first)",
            )
        from jaxalign.checkpoints.hf import check_hf_dir

        check_hf_dir(os.path.expanduser(m.path))  # CheckpointError before anything heavy is loaded
    elif not m.init:
        _fail("model.path", m.path, "set model.path (an HF directory) or model.init (random init)")
    if m.tokenizer or not m.path:
        _check_path("model.tokenizer", m.tokenizer)
    from jaxalign.checkpoints.tokenizer import check_tokenizer_dir

    check_tokenizer_dir(m.tokenizer or m.path)
    for f in ("dtype", "param_dtype"):
        if m[f] not in ("float32", "bfloat16"):
            _fail(f"model.{f}", m[f], "expected float32 or bfloat16")

    d = config.data
    _check_path("data.train", d.train.split(",")[0].strip() if d.train else "")
    for part in d.train.split(",")[1:] + (d.eval.split(",") if d.eval else []):
        _check_path("data.train/eval", part.strip())
    if d.max_length <= 1:
        _fail("data.max_length", d.max_length, "must be > 1")
    attention = config.model.get("attention", "auto")
    if attention not in ("auto", "xla", "chunked", "cudnn", "splash", "triton"):
        _fail("model.attention", attention, "expected one of auto, xla, chunked, cudnn, splash, triton")
    if config.model.get("head_positions", "loss") not in ("loss", "all"):
        _fail("model.head_positions", config.model.head_positions, "expected loss or all")
    if d.get("skip_bad_rows", 0) < 0:
        _fail("data.skip_bad_rows", d.skip_bad_rows, "must be >= 0 (0 = the first bad row is the error)")
    if not 0 < d.max_prompt_length < d.max_length:
        _fail(
            "data.max_prompt_length", d.max_prompt_length, f"must be in (0, data.max_length={d.max_length})"
        )
    spec = registry.get(obj)
    if d.packing and not spec.packable:
        packable = [n for n, o in registry.OBJECTIVES.items() if o.packable]
        _fail("data.packing", d.packing, f"packing applies to {', '.join(packable)}, not {obj!r}")
    if d.packing and not spec.accumulate_packed and config.train.grad_accum_steps > 1:
        _fail(
            "data.packing",
            d.packing,
            f"padding-free {obj} batches do not split into micro-batches: "
            "set train.grad_accum_steps=1 or data.packing=False",
        )
    if "length_buckets" in d and not 1 <= d.length_buckets <= 16:
        _fail("data.length_buckets", d.length_buckets, "must be in [1, 16] (1 = every batch max_length wide)")
    if "tokenize" in d:
        if d.tokenize not in ("auto", "upfront", "lazy"):
            _fail("data.tokenize", d.tokenize, "expected auto, upfront or lazy")
        if d.tokenize == "lazy" and spec.data == "clm":
            _fail(
                "data.tokenize",
                d.tokenize,
                "pretraining text is split and packed up front; use auto or upfront",
            )

    lo = config.get("lora")
    if lo is not None and lo.enabled:
        _check_lora(lo)
    if "adapters" in config:
        _check_adapters(config, spec)

    o = config.optimizer
    if not o.learning_rate > 0 or not math.isfinite(o.learning_rate):
        _fail("optimizer.learning_rate", o.learning_rate, "must be a finite number > 0")
    if o.name not in ("adamw", "adam", "sgd"):
        _fail("optimizer.name", o.name, "expected adamw, adam or sgd")
    if o.schedule not in ("cosine", "linear", "constant"):
        _fail("optimizer.schedule", o.schedule, "expected cosine, linear or constant")
    if o.warmup_steps < 0:
        _fail("optimizer.warmup_steps", o.warmup_steps, "must be >= 0")
    if not 0.0 <= o.end_lr_ratio <= 1.0:
        _fail("optimizer.end_lr_ratio", o.end_lr_ratio, "must be in [0, 1] (final / peak learning rate)")
    for f in ("b1", "b2"):
        if not 0.0 <= o[f] < 1.0:
            _fail(f"optimizer.{f}", o[f], "must be in [0, 1)")
    if not o.eps > 0:
        _fail("optimizer.eps", o.eps, "must be > 0")
    for f in ("weight_decay", "max_grad_norm"):
        if o[f] < 0:
            _fail(f"optimizer.{f}", o[f], "must be >= 0 (0 = off)")

    t = config.train
    if t.num_steps <= 0:
        _fail("train.num_steps", t.num_steps, "must be > 0")
    for f in ("batch_size", "eval_batch_size", "log_every", "keep_checkpoints"):
        if t[f] <= 0:
            _fail(f"train.{f}", t[f], "must be > 0")
    for f in ("eval_every", "checkpoint_every"):
        if t[f] < 0:
            _fail(f"train.{f}", t[f], "must be >= 0 (0 = only at the end)")
    if t.grad_accum_steps <= 0 or t.batch_size % t.grad_accum_steps:
        _fail("train.grad_accum_steps", t.grad_accum_steps, f"must divide train.batch_size={t.batch_size}")
    for field in ("checkpoint_every", "checkpoint_every_minutes", "max_nonfinite_steps"):
        if t[field] < 0:
            _fail(f"train.{field}", t[field], "must be >= 0 (0 = off)")
    if t.get("resume", "auto") not in ("auto", "never", "must"):
        _fail("train.resume", t.resume, "expected one of ['auto', 'never', 'must']")

    mesh = config.mesh
    sizes = [mesh.data, mesh.fsdp, mesh.tensor]
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
        _fail(
            "mesh", f"{sizes}", "axis sizes must be positive, with at most one -1 (= the remaining devices)"
        )
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
        _fail(
            "mesh",
            f"data={mesh.data} fsdp={mesh.fsdp} tensor={mesh.tensor}",
            f"does not divide the {num_devices} devices",
        )
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        _fail(
            "mesh",
            f"data={mesh.data} fsdp={mesh.fsdp} tensor={mesh.tensor}",
            f"uses {math.prod(sizes)} devices but there are {num_devices}",
        )
    batch_shards = hosts.batch_shards(sizes)
    micro = t.batch_size // t.grad_accum_steps
    if micro % batch_shards:
        _fail(
            "train.batch_size",
            t.batch_size,
            f"micro-batch {micro} (batch_size / grad_accum_steps) must divide by data × fsdp = {batch_shards}",
        )
    if t.batch_size % process_count:
        _fail("train.batch_size", t.batch_size, f"must divide by the {process_count} processes")
    if t.eval_batch_size % batch_shards:
        _fail("train.eval_batch_size", t.eval_batch_size, f"must divide by data × fsdp = {batch_shards}")
    return tuple(sizes)


def check_model_fits(config, tokenizer, longest=None, field="data.max_length"):
    """Before any weight loads: the tokenizer's ids fit the model's vocabulary (a tokenizer with added
    tokens past it would index past the embeddings: every step non-finite), and the longest sequence
    (`longest`, default `data.max_length`) fits the model's positions. `model.path` checkpoints only (a
    `model.init` model takes the tokenizer's size)."""
    from jaxalign import checkpoints

    m = config.model
    if not m.path:
        return
    hf = checkpoints.hf.check_hf_dir(m.path)
    attention = m.get("attention", "auto")
    if attention != "auto":  # a kernel that cannot run this model: one line, not a silent fallback
        from jaxalign.models import ModelConfig

        try:
            ModelConfig.from_hf(hf, attention_impl=attention)
        except ValueError as e:
            config_fail("model.attention", attention, str(e).split(": ", 1)[-1])
    vocab, positions = hf.get("vocab_size"), hf.get("max_position_embeddings")
    if vocab and len(tokenizer) > int(vocab):
        where = (
            f"model.tokenizer={m.tokenizer!r}" if m.tokenizer else f"the tokenizer in model.path={m.path!r}"
        )
        config_fail(
            "model.tokenizer" if m.tokenizer else "model.path",
            m.tokenizer or m.path,
            f"{where} has {len(tokenizer)} tokens but the model's vocabulary is {vocab} (ids >= {vocab} have no "
            "embedding); use the model's own tokenizer, or resize the model's embeddings first",
        )
    longest = config.data.max_length if longest is None else longest
    if positions and longest > int(positions):
        config_fail(
            field,
            config[field.split(".")[0]][field.split(".")[1]],
            f"sequences of up to {longest} tokens exceed the model's max_position_embeddings={positions} "
            f"({m.path}/config.json); lower it",
        )
