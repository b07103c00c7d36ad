"""Mixture-of-experts router losses (Switch Transformer's load balancing, ST-MoE's z-loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def router_losses(logits: Array, experts: Array, valid: Array) -> tuple[Array, dict]:
    """The router's auxiliary losses over the real tokens of one layer.

        p_t      = softmax(logits_t)                                    [N, E] router probabilities
        f_{j,e}  = mean_t 1[experts_{t,j} = e]                          share of the j-th choices sent to e
        P_e      = mean_t p_{t,e}
        balance  = E · Σ_j Σ_e f_{j,e} · P_e       (Fedus et al. 2021, eq. 4; transformers'
                                                     `load_balancing_loss_func`: 1 · k when uniform)
        z        = mean_t logsumexp(logits_t)²     (Zoph et al. 2022, ST-MoE)

    Args:
      logits: [N, E] float router logits; experts: [N, k] int chosen experts; valid: [N] 1 on real tokens
        (padding takes no part in the means).

    Returns:
      (balance, {"router/balance", "router/z", "router/load_max", "router/load"}): `load` [E] is each
      expert's share of the assignments (1/E each when balanced), `load_max` the busiest expert's.
    """
    e = logits.shape[-1]
    w = valid.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jax.nn.one_hot(experts, e, dtype=jnp.float32)  # [N, k, E]
    f = jnp.einsum("n,nke->ke", w, chosen) / n  # [k, E]
    p = jnp.einsum("n,ne->e", w, probs) / n  # [E]
    balance = e * jnp.sum(f * p[None])
    z = jnp.sum(w * jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1) ** 2) / n
    load = jnp.sum(f, axis=0) / jnp.maximum(jnp.sum(f), 1e-9)
    return balance, {
        "router/balance": balance,
        "router/z": z,
        "router/load_max": jnp.max(load),
        "router/load": load,
    }


@jax.custom_vjp
def add_loss_gradient(y: Array, loss: Array) -> Array:
    """`y` unchanged; in a gradient of anything computed from `y`, `loss`'s own gradient is added (as if
    `loss` were added to the objective). So a model's auxiliary losses (the router's) train every
    objective without the objectives knowing of them."""
    del loss
    return y


def _fwd(y, loss):
    return y, jnp.zeros_like(loss)


def _bwd(zero, g):
    return g, jnp.ones_like(zero)


add_loss_gradient.defvjp(_fwd, _bwd)
