"""The one training loop: `train_and_evaluate(config, workdir)` for every objective, offline or RL.

Flow: validate config → mesh → the run (`setup.build_run` for offline objectives, `rl.build_run` for
PPO / GRPO: tokenizer, model, parameters on the mesh, the loss, a batch source, an evaluator) → one jitted,
sharded, donated step (`step.make_train_step`) → loop: batch from the source, step, progress and metrics,
periodic evaluation, orbax checkpoints → HF export.

    batch source                 step (jit, donated state)             every log_every / eval_every
    offline: data → batch   ─┐
                             ├→  epochs × minibatches × micro-batch  → metrics.jsonl, TensorBoard, eval,
    RL: sample → score →    ─┘   updates of the objective's loss        checkpoint (state + source state)
        advantages (policy = the state's own params)

Resumes from the latest checkpoint in `<workdir>/checkpoints` if there is one. SIGTERM / SIGINT stop it
after the current step with a checkpoint and exit code 75; non-finite updates are skipped (`preemption`).
"""

import os

import jax
import jax.numpy as jnp
from absl import logging

from jaxalign import hosts, registry, sharding
from jaxalign.models.attention import CAUSAL_CHUNK
from jaxalign.checkpoints.orbax_state import StateCheckpointer, abstract_like
from jaxalign.trainers import flops, optim, preemption, run_identity
from jaxalign.trainers.metrics_writer import MetricsWriter
from jaxalign.trainers.state import TrainState
from jaxalign.trainers.step import make_train_step


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
    elif impl in ("splash", "triton"):
        native = {"splash": "tpu", "triton": "gpu"}[impl]
        impl = (
            f"{impl} (Pallas, segment ids{'' if backend == native else ', interpret mode: slow, for tests'})"
        )
    return f"{impl} on {backend}"


DISPLACEMENT_NATS = 0.5  # per chosen token below the reference's: the displacement warning's threshold


def displacement_warning(record, config, warned):
    """Warn once when the chosen completions lose probability while the margins grow (displacement: the
    preference is learned by pushing both completions down, the rejected one faster): the mean
    `logps/chosen_shift_per_token` below -DISPLACEMENT_NATS with positive `rewards/margins`. Returns
    whether it has warned."""
    shift = record.get("train/logps/chosen_shift_per_token")
    margin = record.get("train/rewards/margins")
    if warned or shift is None or margin is None or margin <= 0 or shift >= -DISPLACEMENT_NATS:
        return warned
    logging.warning(
        "displacement: the chosen completions' log-probs fell %.2f nats per token below the reference's "
        "while the margins grew; consider --config.%s.dpop_lambda=50 or a larger rpo_alpha "
        "(jaxalign/losses/dpo.py)",
        -shift,
        config.objective,
    )
    return True


def builder(config):
    """The module that validates and builds runs of this objective (`registry.SOURCES`)."""
    import importlib

    return importlib.import_module(registry.SOURCES[registry.get(config.objective).trainer])


def split_devices(config, devices):
    """(the train mesh's devices, RL's sampler devices: the last `mesh.rollout_devices`, else none)."""
    n = int(config.mesh.get("rollout_devices", 0))
    return (
        (list(devices[: len(devices) - n]), list(devices[len(devices) - n :])) if n else (list(devices), [])
    )


def build(config, mesh, rollout_devices=()):
    """(run, initial TrainState, jitted train step) for `config` on `mesh` (RL's sampler on
    `rollout_devices` when there are any)."""
    extra = {"rollout_devices": list(rollout_devices)} if rollout_devices else {}
    run = builder(config).build_run(config, mesh, **extra)
    tx, schedule = optim.make_optimizer(run.optimizer_config, run.total_updates)
    with jax.set_mesh(mesh):
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=run.params,
            opt_state=optim.init_state(tx, run.params),
            rng=jax.random.key_data(jax.random.key(config.seed)),
        )
    train_step = jit_train_step(
        config,
        run.loss_fn,
        tx,
        schedule,
        jax.tree.map(lambda x: x.sharding, state),
        jax.tree.map(lambda x: x.sharding, run.ref_params),
        run.batch_sharding,
        epochs=run.epochs,
        num_minibatches=run.num_minibatches,
    )
    run.params = None  # the state holds them now (donated at the first step)
    return run, state, train_step


def jit_train_step(
    config,
    loss_fn,
    tx,
    schedule,
    state_shardings,
    frozen_shardings,
    batch_sharding,
    epochs=1,
    num_minibatches=1,
):
    """The jitted, sharded train step with the state donated: what the loop runs and `jaxalign.plan`
    compiles ahead of time."""
    return jax.jit(
        make_train_step(
            loss_fn,
            tx,
            grad_accum_steps=config.train.grad_accum_steps,
            epochs=epochs,
            num_minibatches=num_minibatches,
            schedule=schedule,
            batch_sharding=batch_sharding,
        ),
        in_shardings=(state_shardings, batch_sharding, frozen_shardings),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]  # tracing, lowering and XLA compilation in this process so far


def _count_compile(event, duration, **_):
    if event in _COMPILE_EVENTS:
        _compile_seconds[0] += duration


jax.monitoring.register_event_duration_secs_listener(_count_compile)


def one_step(run, train_step, state):
    """Next batch from the run's source, then the update. Returns (state, metrics as device arrays,
    {"tokens", "flops", "compile_s"}: the batch's counts and the seconds spent compiling the step)."""
    batch, info, source_metrics = run.batches.next(state)
    before = _compile_seconds[0]
    state, metrics = train_step(state, batch, run.ref_params)
    preemption.fault_point(lambda: int(state.step), "update")  # test-only (no-op, no sync, unless asked)
    return state, {**source_metrics, **metrics}, {**info, "compile_s": _compile_seconds[0] - before}


def train_and_evaluate(config, workdir, devices=None, stop_after=None):
    """Runs the configured objective; returns {"train": last logged metrics, "eval": last eval metrics,
    "eval_start": the step-0 eval (when the run started from scratch and has an eval set)}.

    `devices`: the devices to build the mesh over (default: all). `stop_after`: leave the loop after this
    step without a final checkpoint or export, as a crash would (tests of exact resume use it).
    """
    hosts.maybe_initialize(config.distributed)
    devices = jax.devices() if devices is None else devices
    mesh_shape = builder(config).validate(config, len(devices), jax.process_count())
    is_chief = jax.process_index() == 0
    train_devices, rollout_devices = split_devices(config, devices)
    mesh = sharding.make_mesh(*mesh_shape, devices=train_devices)
    logging.info("mesh %s over %d devices, %d processes", dict(mesh.shape), len(devices), jax.process_count())

    if workdir:  # train.resume against the workdir, before anything loads
        run_identity.check_resume_mode(config, hosts.last_checkpoint(workdir))
    run, state, train_step = build(config, mesh, rollout_devices)
    t = config.train
    final = {}
    identity = run_identity.identity(config, run)
    with jax.set_mesh(mesh):
        ckpt = (
            StateCheckpointer(os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints)
            if workdir
            else None
        )
        meta = {}
        if ckpt and ckpt.latest_step() is not None:
            where = os.path.join(ckpt.directory, str(ckpt.latest_step()))
            run_identity.check(ckpt.read_meta().get("identity"), identity, where)  # before restoring
            state, data_state, meta = ckpt.restore(abstract_like(state))
            run.batches.set_state(data_state)
            print(f"Resumed from {ckpt.directory} at step {int(state.step)}", flush=True)

        writer = MetricsWriter(workdir if is_chief else "", t.num_steps)
        start = int(state.step)
        pending, tokens, step_flops = [], 0, 0.0
        peak = peak_flops(config, devices)
        print(
            f"Attention: {attention_report(run.model_config)}; peak "
            f"{f'{peak / 1e12:.0f} TFLOP/s over {len(devices)} devices' if peak else 'unknown (no MFU)'}",
            flush=True,
        )
        share = getattr(run.batches, "head_share", 1.0)
        if share < 1:
            print(
                f"LM head: at the loss's positions only, up to {share:.0%} of each row (measured on the first "
                "training batches; a batch with a row needing more runs the whole-row head)",
                flush=True,
            )
        displaced = False
        guard = preemption.Guard(t, meta=meta, is_chief=is_chief)  # SIGTERM / SIGINT handlers
        stopped_early = False
        try:
            print(f"Training {config.objective} for {t.num_steps} steps ({run.describe(state)})", flush=True)
            if run.evaluate and start == 0:  # the starting point, to compare the end against
                final["eval_start"] = final["eval"] = writer.write(
                    0, run.evaluate(state.params), prefix="eval"
                )
            for step in range(start + 1, t.num_steps + 1):
                state, metrics, info = one_step(run, train_step, state)
                if step == start + 1:
                    print(f"Compiled the train step in {info['compile_s']:.1f} s", flush=True)
                pending.append(metrics)
                tokens += info["tokens"]
                step_flops += info["flops"]
                decision = guard.after_step(step, metrics["nonfinite"])
                stop = decision.stop and step < t.num_steps  # at the last step the run ends anyway
                if step % t.log_every == 0 or step == t.num_steps or stop:
                    records = jax.device_get(pending)
                    final["train"] = writer.write(
                        step,
                        {**hosts.mean_metrics(records), **guard.counts()},
                        tokens=tokens,
                        flops=step_flops or None,
                        peak_flops=peak,
                    )
                    pending, tokens, step_flops = [], 0, 0.0
                    displaced = displacement_warning(final["train"], config, displaced)
                if (
                    run.evaluate
                    and not stop
                    and (step == t.num_steps or (t.eval_every and step % t.eval_every == 0))
                ):
                    final["eval"] = writer.write(step, run.evaluate(state.params), prefix="eval")
                if step == t.num_steps or decision.save:
                    meta_now = {"objective": config.objective, "identity": identity}
                    guard.save(ckpt, step, state, run.batches.get_state(), meta_now)
                if stop:
                    guard.stop(ckpt, step)  # raises Preempted: exit code 75
                if stop_after is not None and step >= stop_after:
                    stopped_early = True
                    break
        finally:
            guard.close()
            writer.close()
            run.batches.close()  # the batch prefetch thread
            if ckpt:
                ckpt.close()
        if workdir and t.export_hf and not stopped_early:  # every process calls it (gathers shards)
            path = os.path.join(workdir, "hf")
            run.export(state.params, path)
            print(f"Exported Hugging Face checkpoint to {path}", flush=True)
    return final
