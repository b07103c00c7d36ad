"""The one train step: every objective, offline or RL, updates its parameters here.

    step = make_train_step(loss_fn, tx, grad_accum_steps=2, schedule=schedule)
    step = jax.jit(step, in_shardings=..., out_shardings=..., donate_argnums=0)
    state, metrics = step(state, batch, frozen)

`loss_fn(params, frozen, batch) -> (loss, metrics)` is the objective's (`make_loss_fn`): an offline loss
from `trainers/objectives.py`, or an RL algorithm's (`trainers/ppo.py`, `trainers/grpo.py`) over a
rollout batch. `frozen` is what the loss reads but never trains: the frozen reference policy (DPO, KTO),
the frozen base under adapters (which is also the reference), or None. It is a separate argument so that it
is never donated and never differentiated.

One step is `epochs × num_minibatches` optimiser updates (1 × 1 offline; RL's PPO epochs / GRPO
iterations over shuffled minibatches of a rollout), each on `grad_accum_steps` micro-batches whose
gradients are averaged in a `lax.scan`. An update whose loss or gradient norm is not finite is skipped
(parameters and optimiser state kept; `nonfinite` counts the fraction skipped; see `preemption`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxalign import registry
from jaxalign.lora import kinds
from jaxalign.trainers import objectives, preemption
from jaxalign.trainers.objectives import hparams
from jaxalign.trainers.state import TrainState


def make_loss_fn(model, config):
    """The offline objective's `loss_fn(params, frozen, batch)`, built by its registry entry's builder.

    With adapters (`model` is a `lora.LoraModel` or `BottleneckModel`), `params` are the adapters and `frozen` the frozen base,
    which is also the reference policy."""
    builder = getattr(objectives, registry.get(config.objective).loss)  # make_<objective>_loss
    loss_fn = builder(model, hparams(config))
    if getattr(getattr(model, "config", None), "num_experts", 0) and isinstance(model, nn.Module):
        loss_fn = objectives.with_router_metrics(loss_fn)  # router/load_max, ... in the metrics
    kind = kinds.kind_of(config)
    return loss_fn if kind is None else kinds.wrap_loss(kind, loss_fn)


def _split_micro(batch, n):
    """[B, ...] -> [n, B/n, ...] for gradient accumulation."""
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def make_update(loss_fn, tx, grad_accum_steps=1):
    """One optimiser update: `update(params, opt_state, frozen, batch, step) -> (params, opt_state,
    metrics)`, the gradient averaged over `grad_accum_steps` micro-batches of `batch` (the loss and metrics
    reported are the micro-batch means). `step` (1-based, traced) serves only the test-only NaN injection."""
    n_micro = int(grad_accum_steps)
    nan_steps = preemption.injected_nan_steps()  # test-only, empty otherwise

    def update(params, opt_state, frozen, batch, step):
        grad_fn = jax.value_and_grad(preemption.with_injected_nan(loss_fn, step, nan_steps), has_aux=True)
        if n_micro == 1:
            (loss, metrics), grads = grad_fn(params, frozen, batch)
        else:
            micro = _split_micro(batch, n_micro)

            def body(acc, mb):
                (l, m), g = grad_fn(params, frozen, mb)
                return jax.tree.map(jnp.add, acc, (l, m, g)), None

            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: grad_fn(params, frozen, first)))
            (loss, metrics), grads = zeros
            (loss, metrics, grads), _ = jax.lax.scan(body, (loss, metrics, grads), micro)
            loss, metrics, grads = jax.tree.map(lambda x: x / n_micro, (loss, metrics, grads))
        updates, new_opt_state = tx.update(grads, opt_state, params)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = preemption.keep_if_finite(
            finite, (optax.apply_updates(params, updates), new_opt_state), (params, opt_state)
        )
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": grad_norm,
            "update_norm": optax.global_norm(updates),
            "nonfinite": 1.0 - finite.astype(jnp.float32),
        }
        return params, opt_state, metrics

    return update


def minibatch_indices(key, rows, *, epochs, num_minibatches):
    """[epochs · num_minibatches, rows / num_minibatches] row indices: each epoch a fresh permutation of
    the rows, cut into `num_minibatches` minibatches."""
    perms = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), rows) for e in range(epochs)])
    return perms.reshape(epochs * num_minibatches, rows // num_minibatches)


def make_train_step(
    loss_fn, tx, *, grad_accum_steps=1, epochs=1, num_minibatches=1, schedule=None, batch_sharding=None
):
    """Returns `train_step(state, batch, frozen) -> (state, metrics)`.

    With `epochs × num_minibatches` > 1 (RL), the batch's rows ([R, ...] arrays) are shuffled each epoch
    (keys from `state.rng`; a rollout in units, `sampling.scoring.split_units`, one epoch, comes shuffled
    and is cut as it is) and cut into minibatches, one update each, in a `lax.scan` (one compiled body);
    metrics are averaged over the updates. Metrics also carry the gradient, parameter and update global
    norms and the learning rate (`schedule` counts optimiser updates).
    """
    update = make_update(loss_fn, tx, grad_accum_steps)
    updates_per_step = int(epochs) * int(num_minibatches)

    def train_step(state, batch, frozen):
        step = state.step + 1
        key = jax.random.wrap_key_data(state.rng)
        if updates_per_step == 1:
            params, opt_state, metrics = update(state.params, state.opt_state, frozen, batch, step)
        else:
            rows = jax.tree.leaves(batch)[0].shape[0]
            if "unit" in batch:  # a rollout in units (`scoring.split_units`), already in random order
                idx = jnp.arange(rows).reshape(epochs * num_minibatches, rows // num_minibatches)
            else:
                idx = minibatch_indices(
                    jax.random.fold_in(key, 2), rows, epochs=epochs, num_minibatches=num_minibatches
                )

            def body(carry, i):
                params, opt_state = carry
                mb = jax.tree.map(lambda x: jnp.take(x, i, axis=0), batch)
                if batch_sharding is not None:  # keep the minibatch split over the batch axes
                    mb = jax.lax.with_sharding_constraint(mb, jax.tree.map(lambda _: batch_sharding, mb))
                params, opt_state, metrics = update(params, opt_state, frozen, mb, step)
                return (params, opt_state), metrics

            (params, opt_state), stacked = jax.lax.scan(body, (state.params, state.opt_state), idx)
            metrics = jax.tree.map(lambda x: jnp.mean(x, axis=0), stacked)
        metrics["param_norm"] = optax.global_norm(params)
        if schedule is not None:
            metrics["learning_rate"] = jnp.asarray(schedule(state.step * updates_per_step), jnp.float32)
        rng, _ = jax.random.split(key)
        new_state = TrainState(step=step, params=params, opt_state=opt_state, rng=jax.random.key_data(rng))
        return new_state, metrics

    return train_step


def make_eval_step(loss_fn):
    """Returns `eval_step(params, batch, frozen) -> metrics` (the loss and its metrics, no update)."""

    def eval_step(params, batch, frozen):
        loss, metrics = loss_fn(params, frozen, batch)
        return {**metrics, "loss": loss}

    return eval_step
