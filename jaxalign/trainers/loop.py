"""The training loop: `train_and_evaluate(config, workdir)` for every offline objective.

Flow: validate config → mesh → tokenizer, model, parameters (loaded onto the mesh) → data → jitted,
sharded, donated step → loop with progress, metrics, periodic evaluation and orbax checkpoints → HF
export. Resumes from the latest checkpoint in `<workdir>/checkpoints` if there is one. SIGTERM / SIGINT
stop it after the current step with a checkpoint and exit code 75; non-finite updates are skipped
(`preemption`).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxalign import sharding
from jaxalign.models.attention import CAUSAL_CHUNK
from jaxalign.checkpoints.orbax_state import StateCheckpointer
from jaxalign.trainers import distributed, flops, preemption, setup
from jaxalign.trainers.metrics_writer import MetricsWriter
from jaxalign.trainers.optim import make_optimizer
from jaxalign.trainers.state import TrainState
from jaxalign.trainers.step import make_eval_step, make_train_step
from jaxalign.trainers.validate import validate


# Host-side keys of data batches that never go to devices.
HOST_KEYS = ("answer", "weight")


def _to_global(batch, batch_sharding):
    """Per-host numpy batch -> global jax arrays sharded over the batch axes."""
    return {
        k: jax.make_array_from_process_local_data(batch_sharding, v)
        for k, v in batch.items()
        if k not in HOST_KEYS
    }


def _mean_metrics(records):
    keys = records[0].keys()
    return {k: float(np.mean([r[k] for r in records])) for k in keys}


def _count_tokens(batch):
    return int(
        sum(np.sum(v) for k, v in batch.items() if k.endswith("segment_ids") and v.ndim == 2 for v in [v > 0])
    )


def peak_flops(config, devices):
    """The devices' summed peak FLOP/s: `train.peak_tflops` per device, or looked up by device kind."""
    per_device = config.train.get("peak_tflops", 0.0) or flops.peak_tflops(devices[0].device_kind)
    return per_device * 1e12 * len(devices) if per_device else None


def attention_report(model_config):
    """Which attention kernel the step uses, for the start-up line."""
    impl, backend = model_config.attention_impl, jax.default_backend()
    if impl is None:
        if backend == "gpu" and model_config.dtype in ("bfloat16", "float16"):
            impl = "cudnn flash (segment masks) when cuDNN accepts the shapes, else xla"
        elif backend == "cpu":
            impl = f"causal chunks of {CAUSAL_CHUNK} queries (xla for rows of up to {CAUSAL_CHUNK})"
        else:
            impl = "xla"
    return f"{impl} on {backend}"


def evaluate(eval_step, params, ref_params, eval_iter_fn, batch_sharding):
    """Mean of the eval metrics over the full batches of one pass of the held-out split.

    The last, partial batch (padding rows have `weight` 0) is left out: the losses average over rows, and
    padding rows would bias them. Use an eval set whose size `train.eval_batch_size` divides to see all of it.
    """
    records, n = [], 0
    for batch in eval_iter_fn():
        if "weight" in batch and float(np.min(batch["weight"])) < 1.0:
            continue
        records.append(jax.device_get(eval_step(params, _to_global(batch, batch_sharding), ref_params)))
        n += 1
    out = _mean_metrics(records) if records else {}
    if out:
        out["num_batches"] = float(n)
    return out


def train_and_evaluate(config, workdir, devices=None, stop_after=None):
    """Runs the configured objective; returns the final metrics dict (train and eval).

    `devices`: the devices to build the mesh over (default: all). `stop_after`: leave the loop after this
    step without a final checkpoint or export, as a crash would (tests of exact resume use it).
    """
    distributed.maybe_initialize(config.distributed)
    devices = jax.devices() if devices is None else devices
    mesh_shape = validate(config, len(devices), jax.process_count())
    is_chief = jax.process_index() == 0
    mesh = sharding.make_mesh(*mesh_shape, devices=devices)
    logging.info("mesh %s over %d devices, %d processes", dict(mesh.shape), len(devices), jax.process_count())

    run = setup.build_run(config, mesh)  # tokenizer, model, params, data
    tx, schedule = make_optimizer(config.optimizer, config.train.num_steps)
    batch_sharding = sharding.batch_sharding(mesh)

    with jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else mesh:
        params = run.params
        opt_state = jax.jit(tx.init)(params)
        rng = jax.random.key_data(jax.random.key(config.seed))
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=rng)
        state_shardings = jax.tree.map(lambda x: x.sharding, state)
        ref_params = run.ref_params
        ref_shardings = jax.tree.map(lambda x: x.sharding, ref_params) if ref_params is not None else None

        train_step = jax.jit(
            make_train_step(run.model, tx, config, schedule),
            in_shardings=(state_shardings, batch_sharding, ref_shardings),
            out_shardings=(state_shardings, None),
            donate_argnums=0,
        )
        eval_step = jax.jit(
            make_eval_step(run.model, config),
            in_shardings=(state_shardings.params, batch_sharding, ref_shardings),
        )

        ckpt = (
            StateCheckpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
            if workdir
            else None
        )
        meta = {}
        if ckpt and ckpt.latest_step() is not None:
            state, data_state, meta = ckpt.restore(
                jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
            )
            run.train_iter.set_state(data_state)
            print(f"Resumed from {ckpt.directory} at step {int(state.step)}", flush=True)

        num_steps = config.train.num_steps
        writer = MetricsWriter(workdir if is_chief else "", num_steps)
        start = int(state.step)
        pending, tokens, step_flops = [], 0, 0.0
        passes = flops.step_passes(reference=run.reference_in_step, frozen_base=run.lora_config is not None)
        peak = peak_flops(config, devices)
        print(
            f"Attention: {attention_report(run.model_config)}; peak "
            f"{f'{peak / 1e12:.0f} TFLOP/s over {len(devices)} devices' if peak else 'unknown (no MFU)'}",
            flush=True,
        )
        final = {}
        guard = preemption.Guard(config.train, meta=meta, is_chief=is_chief)  # SIGTERM / SIGINT handlers
        try:
            print(f"Training {config.objective} for {num_steps} steps ({run.describe()})", flush=True)
            if run.eval_iter_fn and start == 0:  # The starting point, to compare the end against.
                final["eval"] = writer.write(
                    0,
                    evaluate(eval_step, state.params, ref_params, run.eval_iter_fn, batch_sharding),
                    prefix="eval",
                )
            for step in range(start + 1, num_steps + 1):
                batch = next(run.train_iter)
                tokens += _count_tokens(batch) * jax.process_count()
                step_flops += (
                    flops.batch_flops(run.model_config, batch, passes, lm_head=run.head == "lm")
                    * jax.process_count()
                )
                state, metrics = train_step(state, _to_global(batch, batch_sharding), ref_params)
                pending.append(metrics)
                decision = guard.after_step(step, metrics["nonfinite"])
                stop = decision.stop and step < num_steps  # at the last step the run ends anyway
                if step % config.train.log_every == 0 or step == num_steps or stop:
                    final["train"] = writer.write(
                        step,
                        {**_mean_metrics(jax.device_get(pending)), **guard.counts()},
                        tokens=tokens,
                        flops=step_flops,
                        peak_flops=peak,
                    )
                    pending, tokens, step_flops = [], 0, 0.0
                if (
                    run.eval_iter_fn
                    and not stop
                    and (
                        step == num_steps or (config.train.eval_every and step % config.train.eval_every == 0)
                    )
                ):
                    final["eval"] = writer.write(
                        step,
                        evaluate(eval_step, state.params, ref_params, run.eval_iter_fn, batch_sharding),
                        prefix="eval",
                    )
                if step == num_steps or decision.save:
                    guard.save(ckpt, step, state, run.train_iter.get_state(), {"objective": config.objective})
                if stop:
                    guard.stop(ckpt, step)  # raises Preempted: exit code 75
                if stop_after is not None and step >= stop_after:
                    return final
        finally:
            guard.close()
            writer.close()
            getattr(run.train_iter, "close", lambda: None)()  # the batch prefetch thread
            if ckpt:
                ckpt.close()
        if workdir and config.train.export_hf:
            path = os.path.join(workdir, "hf")
            setup.export(run, state.params, path)
            print(f"Exported Hugging Face checkpoint to {path}", flush=True)
    return final
