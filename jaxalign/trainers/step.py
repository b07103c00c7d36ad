"""The train-step factory: picks the objective's loss from the config and returns a pure step function.

    step = make_train_step(model, tx, config)          # reads the config here, never inside the trace
    step = jax.jit(step, in_shardings=..., out_shardings=..., donate_argnums=0)
    state, metrics = step(state, batch, ref_params)

`ref_params` (the frozen reference policy, or None) is a separate argument so that it is never donated
and never differentiated.
"""

import jax
import jax.numpy as jnp
import optax

from jaxalign.trainers import preemption
from jaxalign import registry
from jaxalign.trainers import objectives
from jaxalign.trainers.objectives import hparams
from jaxalign.trainers.state import TrainState


def make_loss_fn(model, config):
    """The objective's `loss_fn(params, ref_params, batch)`. With LoRA (`model` is a `lora.LoraModel`),
    `params` are the adapters and `ref_params` the frozen base, which is also the reference policy."""
    builder = getattr(objectives, registry.get(config.objective).loss)  # make_<objective>_loss
    loss_fn = builder(model, hparams(config))
    if "lora" in config and config.lora.enabled:
        from jaxalign import lora

        loss_fn = lora.lora_loss_fn(loss_fn)
    return loss_fn


def _split_micro(batch, n):
    """[B, ...] -> [n, B/n, ...] for gradient accumulation."""
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def make_train_step(model, tx, config, schedule=None):
    """Returns `train_step(state, batch, ref_params) -> (state, metrics)`.

    With `train.grad_accum_steps = n > 1` the batch is split into n micro-batches whose gradients are
    averaged in a `lax.scan` (the loss reported is the mean of the micro-batch losses).
    Metrics also carry the gradient, parameter and update global norms, and the learning rate.
    An update whose loss or gradient norm is not finite is skipped (parameters and optimiser state kept,
    `nonfinite` = 1 in the metrics; see `preemption`).
    """
    loss_fn = make_loss_fn(model, config)
    n_micro = int(config.train.grad_accum_steps)
    nan_steps = preemption.injected_nan_steps()  # test-only, empty otherwise

    def train_step(state, batch, ref_params):
        grad_fn = jax.value_and_grad(
            preemption.with_injected_nan(loss_fn, state.step + 1, nan_steps), has_aux=True
        )
        if n_micro == 1:
            (loss, metrics), grads = grad_fn(state.params, ref_params, batch)
        else:

            def body(acc, micro):
                (l, m), g = grad_fn(state.params, ref_params, micro)
                return jax.tree.map(jnp.add, acc, (l, m, g)), None

            zeros = jax.tree.map(
                jnp.zeros_like,
                jax.eval_shape(
                    lambda: grad_fn(
                        state.params, ref_params, jax.tree.map(lambda x: x[0], _split_micro(batch, n_micro))
                    )
                ),
            )
            (loss, metrics), grads = zeros
            (loss, metrics, grads), _ = jax.lax.scan(
                body, (loss, metrics, grads), _split_micro(batch, n_micro)
            )
            loss, metrics, grads = jax.tree.map(lambda x: x / n_micro, (loss, metrics, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = preemption.keep_if_finite(
            finite, (params, opt_state), (state.params, state.opt_state)
        )
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        metrics["grad_norm"] = grad_norm
        metrics["param_norm"] = optax.global_norm(params)
        metrics["update_norm"] = optax.global_norm(updates)
        if schedule is not None:
            metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        rng, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
        new_state = TrainState(
            step=state.step + 1, params=params, opt_state=opt_state, rng=jax.random.key_data(rng)
        )
        return new_state, metrics

    return train_step


def make_eval_step(model, config):
    """Returns `eval_step(params, batch, ref_params) -> metrics` (the loss and its metrics, no update)."""
    loss_fn = make_loss_fn(model, config)

    def eval_step(params, batch, ref_params):
        loss, metrics = loss_fn(params, ref_params, batch)
        return {**metrics, "loss": loss}

    return eval_step
