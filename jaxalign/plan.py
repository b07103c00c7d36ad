"""Memory planner: does a config's train step fit on a topology, before you pay for the machines?

    python -m jaxalign.plan --config=configs/recipes/dpo_llama3_1_8b.py:v5p-8 --topology=v5p-8
    python -m jaxalign.plan --config=configs/dpo.py --topology=8xH100:80 --config.train.batch_size=64

It builds the run's train step exactly as the trainer does (`trainers/loop.jit_train_step`: same loss,
optimiser, shardings and donation) over abstract arrays on as many fake CPU devices as the topology has —
no weights, no data set, no accelerator — compiles it ahead of time, and reads XLA's per-device buffer
sizes (`compiled.memory_analysis()`). It prints per-device bytes for parameters, optimiser state,
reference, the batch and the step's temporaries (gradients, activations saved for the backward pass, the
rest), the verdict "fits" / "does not fit by X GiB", and what to change when it does not fit.

The batch is the worst case the config allows: every sequence `data.max_length` tokens (no length bucket
below the widest; padding-free batches with one sequence per row). The model shape comes from
`model.path`'s config.json, or, when that directory is not on this machine (a recipe planned before
downloading), from the public config.json shipped under `configs/recipes/models/<same directory name>/`.

What the numbers are: XLA's buffer assignment for this program on the CPU backend, per device. A TPU or
GPU compiler schedules and fuses differently, so the temporaries there differ (the parameters, optimiser
state, reference and batch do not); the attention is compiled as the target runs it (XLA's on TPU and as
the upper bound for GPU, where cuDNN flash attention needs less). On this CPU the plan agrees with the
measured peak of real runs within 10% (`tests/test_plan.py`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time

# name -> (devices in the JAX sense, hosts (= jax processes), memory per device in GiB, device kind).
TOPOLOGIES = {
    "v5e-8": (8, 1, 16.0, "tpu"),  # one v5litepod-8 host: 8 chips x 16 GiB HBM
    "v5p-8": (4, 1, 95.0, "tpu"),  # one v5p host: 4 chips x 95 GiB (the 8 counts TensorCores)
    "v5p-32": (16, 4, 95.0, "tpu"),  # 4 v5p hosts: 16 chips x 95 GiB
    "8xH100": (8, 1, 80.0, "gpu"),  # one node, 8 x H100 80 GB
    "2x8xH100": (16, 2, 80.0, "gpu"),  # two nodes of 8 x H100 80 GB (one process per node)
}
GIB = 1 << 30
# The shipped config.json files of the recipes' models (plans before the weights are downloaded).
SHIPPED_MODELS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "recipes", "models"
)


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    devices: int
    hosts: int
    gib: float | None  # memory per device; None = unknown (no verdict)
    kind: str  # "tpu" | "gpu" | "cpu"


def parse_topology(spec):
    """A `TOPOLOGIES` name, or `N` / `NxKIND` / `NxKIND:GiB` (e.g. `8xH100:80`, `4xcpu:24`, `16xv5p:95`)."""
    from jaxalign.errors import UserError

    if spec in TOPOLOGIES:
        return Topology(spec, *TOPOLOGIES[spec])
    m = re.fullmatch(r"(\d+)(?:x([A-Za-z0-9_.-]+))?(?::(\d+(?:\.\d+)?))?", spec or "")
    if not m or int(m.group(1)) < 1:
        raise UserError(
            f"--topology={spec!r}: expected one of {', '.join(TOPOLOGIES)} or N[xDEVICE][:GiB], e.g. 8xH100:80"
        )
    device = (m.group(2) or "cpu").lower()
    kind = "tpu" if device.startswith(("v4", "v5", "v6", "tpu")) else "cpu" if device == "cpu" else "gpu"
    return Topology(spec, int(m.group(1)), 1, float(m.group(3)) if m.group(3) else None, kind)


# ---------------------------------------------------------------------------------------------- model
def hf_config_of(config):
    """(the HF config dict the model is built from, where it came from)."""
    import json

    from jaxalign.errors import CheckpointError

    m = config.model
    if m.path:
        path = os.path.expanduser(m.path)
        if os.path.isdir(path):
            from jaxalign.checkpoints.hf import check_hf_dir

            return check_hf_dir(path), os.path.join(path, "config.json")
        shipped = os.path.join(SHIPPED_MODELS, os.path.basename(os.path.normpath(path)), "config.json")
        if not os.path.isfile(shipped):
            raise CheckpointError(
                f"config.model.path={m.path!r}: no such directory, and no shipped config.json for "
                f"{os.path.basename(os.path.normpath(path))!r} in {SHIPPED_MODELS}"
            )
        with open(shipped) as f:
            return json.load(f), shipped
    init = dict(m.init.to_dict())
    if not init.get("vocab_size"):
        from jaxalign import checkpoints

        init["vocab_size"] = len(checkpoints.load_tokenizer(m.tokenizer))
    return init, "config.model.init"


def model_config_of(config, topology):
    """The ModelConfig the run would build, with the attention the target device runs."""
    from jaxalign import models
    from jaxalign.trainers.setup import model_overrides

    hf, _ = hf_config_of(config)
    overrides = model_overrides(config)
    # TPU runs XLA's attention; GPU runs cuDNN flash where it can, which this CPU cannot compile: XLA's is
    # its upper bound. A CPU target runs what the trainer picks on CPU.
    if topology.kind != "cpu":
        overrides["attention_impl"] = "xla"
    return models.ModelConfig.from_hf(hf, **overrides)


# ---------------------------------------------------------------------------------------------- batch
def _long_text(words):
    return " ".join(f"w{i % 97} ." for i in range(words))


def synthetic_batch(config, kind, reference_fn=None):
    """One global host batch of the config's shape in the worst case: every sequence as long as
    `data.max_length` allows (made by the real data pipeline from synthetic rows, embedded tokenizer)."""
    import numpy as np

    from jaxalign import checkpoints, data, defaults
    from jaxalign.data import pipeline

    d, t = config.data, config.train
    n = t.batch_size
    long = _long_text(4 * d.max_length)
    rows = {
        "preference": lambda i: {"prompt": long, "chosen": long, "rejected": long},
        "sft": lambda i: {"prompt": long, "completion": long},
        "kto": lambda i: {"prompt": long, "completion": long, "label": bool(i % 2)},
        "clm": lambda i: {"text": long},
    }
    if kind not in rows:
        from jaxalign.errors import ConfigError

        raise ConfigError(
            f"config.objective={config.objective!r}: the planner covers data-set objectives only"
        )
    tokenizer = checkpoints.load_tokenizer(defaults.asset("tokenizer"))
    tokenizer.model_max_length = 1 << 30  # the synthetic rows are long on purpose
    ds = data.load(
        [rows[kind](i) for i in range(n)],
        kind=kind,
        tokenizer=tokenizer,
        max_length=d.max_length,
        max_prompt_length=d.max_prompt_length,
        packing=d.packing,
        lazy=False,
    )
    batch = next(pipeline.BatchIterator(ds, n, seed=0, row_multiple=1, length_buckets=1))
    if reference_fn is not None:  # precomputed reference log-probs: per-example float32 columns
        batch.update({k: np.zeros((n,), np.float32) for k in reference_fn(batch)})
    return batch


# ---------------------------------------------------------------------------------------------- plan
@dataclasses.dataclass
class Plan:
    topology: Topology
    mesh: dict
    parameters: int  # bytes per device
    optimizer: int
    reference: int
    batch: int
    gradients: int
    activations: int  # saved for the backward pass (traced residuals), per device
    other_temporaries: int
    total: int  # XLA: arguments + outputs - aliased + temporaries
    compile_s: float
    num_params: int
    notes: list

    def fits(self):
        return None if self.topology.gib is None else self.total <= self.topology.gib * GIB


def _per_device(tree):
    import jax

    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * x.dtype.itemsize
    return total


def _abstract(tree, shardings):
    import jax

    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def make_plan(config, topology, devices=None):
    """Compiles the config's train step for `topology` on fake devices; returns a `Plan`."""
    import jax
    import numpy as np

    from jaxalign import models, registry, sharding
    from jaxalign.hosts import HOST_KEYS
    from jaxalign.lora import kinds
    from jaxalign.trainers import loop, objectives, optim, setup
    from jaxalign.trainers.state import TrainState
    from jaxalign.trainers.step import make_loss_fn

    devices = list(jax.devices() if devices is None else devices)[: topology.devices]
    if len(devices) < topology.devices:
        raise RuntimeError(f"{topology.devices} devices needed, {len(devices)} available")
    spec = registry.get(config.objective)
    if spec.trainer != "offline":
        from jaxalign.errors import ConfigError

        raise ConfigError(
            f"config.objective={config.objective!r}: the planner covers data-set objectives only"
        )
    mesh_shape = setup.validate(_without_paths(config), len(devices), topology.hosts)
    mesh = sharding.make_mesh(*mesh_shape, devices=devices)
    mcfg = model_config_of(config, topology)
    model = setup.make_model(mcfg, spec.head)

    logical = models.param_logical_axes(mcfg, model)
    shapes = jax.eval_shape(lambda: models.init_params(mcfg, jax.random.key(0), model))
    param_shardings = sharding.logical_to_shardings(logical, mesh, shapes=shapes)
    params = _abstract(shapes, param_shardings)
    hp = objectives.hparams(config)
    precompute = spec.reference and bool(hp.get("precompute_ref", False))
    ref = params if spec.reference and not precompute else None
    ref_fn = objectives.make_reference_fn(model, config.objective, hp) if precompute else None
    if kinds.kind_of(config) is not None:  # the adapters train; the frozen base is also the reference
        ref = params
        params, _, model = kinds.abstract(config, model, params, mesh)

    def reference_keys(batch):  # the per-example columns the reference pass adds
        host = {k: np.asarray(v) for k, v in batch.items() if k not in HOST_KEYS}
        return jax.eval_shape(ref_fn, shapes, host)

    host_batch = synthetic_batch(config, spec.data, reference_keys if precompute else None)
    bs = sharding.batch_sharding(mesh)

    batch = {
        k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=bs)
        for k, v in host_batch.items()
        if k not in HOST_KEYS
    }

    tx, schedule = optim.make_optimizer(config.optimizer, config.train.num_steps)
    with jax.set_mesh(mesh):
        opt_state = _abstract(jax.eval_shape(tx.init, params), optim.state_shardings(tx, params))
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        state = TrainState(
            step=jax.ShapeDtypeStruct((), np.int32, sharding=rep),
            params=params,
            opt_state=opt_state,
            rng=jax.ShapeDtypeStruct((2,), np.uint32, sharding=rep),
        )
        loss_fn = make_loss_fn(model, config)
        frozen_shardings = jax.tree.map(lambda x: x.sharding, ref)
        step = loop.jit_train_step(
            config,
            loss_fn,
            tx,
            schedule,
            jax.tree.map(lambda x: x.sharding, state),
            frozen_shardings,
            bs,
        )
        start = time.perf_counter()
        compiled = step.lower(state, batch, ref).compile()
        compile_s = time.perf_counter() - start
        micro = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                (x.shape[0] // config.train.grad_accum_steps,) + x.shape[1:], x.dtype
            ),
            batch,
        )
        residuals = jax.eval_shape(
            lambda p, f, b: jax.vjp(lambda p: loss_fn(p, f, b)[0], p)[1], params, ref, micro
        )
    ma = compiled.memory_analysis()
    total = (
        ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes + ma.temp_size_in_bytes
    )
    weight_shapes = {(x.shape, x.dtype) for x in jax.tree.leaves((shapes, params))}
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    activations = (
        sum(
            x.size * x.dtype.itemsize
            for x in jax.tree.leaves(residuals)
            if (x.shape, x.dtype) not in weight_shapes
        )
        // shards
    )
    p_bytes, o_bytes = _per_device(params), _per_device(opt_state)
    gradients = (
        sum(
            math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(np.float32).itemsize
            for x in jax.tree.leaves(params)
        )
        if mcfg.param_dtype == "float32"
        else p_bytes
    )
    temp = ma.temp_size_in_bytes
    notes = []
    if topology.kind != "cpu":
        notes.append(
            f"temporaries compiled by XLA:CPU for a {topology.kind.upper()} target; "
            "parameters, optimiser state, reference and batch are exact"
        )
    return Plan(
        topology=topology,
        mesh=dict(mesh.shape),
        parameters=p_bytes,
        optimizer=o_bytes,
        reference=_per_device(ref) if ref is not None else 0,
        batch=_per_device(batch),
        gradients=min(gradients, temp),
        activations=min(activations, max(temp - gradients, 0)),
        other_temporaries=max(temp - gradients - activations, 0),
        total=total,
        compile_s=compile_s,
        num_params=sum(x.size for x in jax.tree.leaves(shapes)),
        notes=notes,
    )


def _without_paths(config):
    """The config as validation sees it, with a model directory that is not on this machine replaced by
    its config.json's fields (validation checks the directory, the planner needs only the shape), and the
    embedded tokenizer and data (the planner makes its own rows)."""
    from jaxalign import defaults

    c = config.copy_and_resolve_references()
    with c.unlocked():
        if c.model.path and not os.path.isdir(os.path.expanduser(c.model.path)):
            c.model.init = hf_config_of(config)[0]
            c.model.path = ""
        c.model.tokenizer = defaults.asset("tokenizer")
        c.data.train = defaults.asset("preference_train.jsonl")
        c.data.eval = ""
    return c


# ---------------------------------------------------------------------------------------------- report
def gib(n):
    return n / GIB


def size(n):
    """Bytes as GiB, or MiB below one GiB."""
    return f"{n / GIB:9.2f} GiB" if n >= GIB else f"{n / 2**20:9.1f} MiB"


def suggestions(plan, config):
    """What to change when the plan does not fit (or has under 10% headroom), with the saving estimated."""
    out = []
    cap = plan.topology.gib
    if cap is None or plan.total <= 0.9 * cap * GIB:
        return out
    m, t = config.model, config.train
    if not m.remat:
        out.append(
            f"--config.model.remat=True: keeps one input per layer instead of every activation "
            f"(saves most of the {gib(plan.activations):.1f} GiB of activations)"
        )
    if plan.reference and config.get(config.objective).get("precompute_ref") is False:
        out.append(
            f"--config.{config.objective}.precompute_ref=True: reference log-probs computed once up front "
            f"(frees the reference, {gib(plan.reference):.1f} GiB)"
        )
    devices = plan.topology.devices
    fsdp = plan.mesh["fsdp"] * plan.mesh["data"]
    if plan.mesh["data"] > 1:
        sharded = plan.parameters + plan.optimizer + plan.reference + plan.gradients
        out.append(
            f"--config.mesh.data=1 --config.mesh.fsdp={fsdp}: shards parameters and optimiser state over all "
            f"{fsdp} batch devices (saves ≈{gib(sharded * (1 - plan.mesh['fsdp'] / fsdp)):.1f} GiB)"
        )
    elif plan.mesh["fsdp"] < devices and plan.mesh["tensor"] == 1:
        out.append(f"--config.mesh.fsdp={devices}: shard the weights over every device")
    micro = t.batch_size // t.grad_accum_steps
    shards = plan.mesh["data"] * plan.mesh["fsdp"]
    if micro // 2 >= shards and micro % 2 == 0 and micro // 2 % shards == 0:
        step_temp = plan.activations + plan.other_temporaries
        out.append(
            f"--config.train.grad_accum_steps={t.grad_accum_steps * 2}: half the micro-batch, same batch "
            f"(saves ≈{gib(step_temp / 2):.1f} GiB of activations and temporaries)"
        )
    out.append("a topology with more devices or more memory per device")
    return out


def report(plan, config):
    t = plan.topology
    n = plan.num_params
    count = f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
    lines = [
        f"Plan for {config.objective} on {t.name} ({t.devices} devices, {t.hosts} host"
        f"{'s' if t.hosts > 1 else ''}"
        f"{f', {t.gib:g} GiB each' if t.gib else ''}): mesh {plan.mesh}, {count} parameters, "
        f"batch {config.train.batch_size} × {config.data.max_length} tokens, {config.model.dtype} compute, "
        f"remat={config.model.remat}, scan={config.model.scan_layers}",
        "Per device:",
    ]
    rows = [
        ("parameters (trained)", plan.parameters),
        ("optimiser state", plan.optimizer),
        ("reference / frozen base", plan.reference),
        ("batch", plan.batch),
        ("gradients", plan.gradients),
        ("activations (saved for backward)", plan.activations),
        ("other temporaries", plan.other_temporaries),
    ]
    for name, n in rows:
        lines.append(f"  {name:<34} {size(n)}")
    lines.append(f"  {'total (XLA buffer assignment)':<34} {size(plan.total)}")
    fits = plan.fits()
    if fits is None:
        lines.append("Verdict: no memory size given (--topology=NxDEVICE:GiB for a verdict)")
    elif fits:
        lines.append(
            f"Verdict: fits ({gib(plan.total):.1f} of {t.gib:g} GiB, {100 * plan.total / (t.gib * GIB):.0f}% used)"
        )
    else:
        lines.append(f"Verdict: does not fit by {gib(plan.total - t.gib * GIB):.1f} GiB")
    hints = suggestions(plan, config)
    if hints:
        lines.append("To fit (or for headroom), change one of:")
        lines += [f"  {h}" for h in hints]
    lines += [f"Note: {n}" for n in plan.notes]
    lines.append(f"Compiled the train step in {plan.compile_s:.1f} s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def main(argv, config, topology_spec):
    """The command line's body: plan `config` on the topology, print the report. Exit status 0 when it
    fits (or no memory size was given), 1 when it does not."""
    del argv
    from absl import flags, logging

    from jaxalign.errors import UserError

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)

    if not topology_spec:
        raise UserError(f"--topology is required: one of {', '.join(TOPOLOGIES)} or N[xDEVICE][:GiB]")
    topology = parse_topology(topology_spec)
    import jax

    try:  # fake CPU devices, one per device of the topology (before the backend starts)
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", topology.devices)
    except RuntimeError:  # already started (in-process tests): the devices it has
        pass
    plan = make_plan(config, topology, devices=jax.devices("cpu"))
    print(report(plan, config), flush=True)
    return 0 if plan.fits() is not False else 1


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from jaxalign.errors import run_main

    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "Config file with get_config().", lock_config=True
    )
    _TOPOLOGY = flags.DEFINE_string("topology", "", "A topology name or N[xDEVICE][:GiB], e.g. 8xH100:80.")
    flags.mark_flags_as_required(["config"])
    run_main(lambda argv: sys.exit(main(argv, _CONFIG.value, _TOPOLOGY.value)))
