"""The optimiser: optax AdamW with warmup + cosine/linear decay, global-norm clipping, weight-decay mask."""

import jax
import optax


def make_schedule(cfg, num_steps):
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine/linear/constant decay."""
    peak, warmup = cfg.learning_rate, min(cfg.warmup_steps, max(num_steps - 1, 0))
    end = peak * cfg.end_lr_ratio
    decay_steps = max(num_steps - warmup, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif cfg.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"optimizer.schedule={cfg.schedule!r}: expected cosine, linear or constant")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
    """Weight decay on matrices only: norms' scales and biases are not decayed (1-D leaves)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg, num_steps):
    """Returns (optax.GradientTransformation, schedule). `cfg` is `config.optimizer`."""
    schedule = make_schedule(cfg, num_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
        )
    elif cfg.name == "adam":
        opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "sgd":
        opt = optax.sgd(schedule)
    else:
        raise ValueError(f"optimizer.name={cfg.name!r}: expected adamw, adam or sgd")
    if cfg.max_grad_norm and cfg.max_grad_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), opt)
    return opt, schedule


def state_shardings(tx, params):
    """Shardings of `tx`'s state for `params` (arrays or ShapeDtypeStructs with shardings): moments shaped
    like a parameter are sharded like it (FSDP shards Adam's mu and nu with the weights), the rest (step
    counts) replicated. Without it XLA replicates the whole optimiser state on every device."""
    leaves = jax.tree.leaves(params)
    replicated = jax.sharding.NamedSharding(leaves[0].sharding.mesh, jax.sharding.PartitionSpec())
    return optax.tree_map_params(
        tx,
        lambda _, s: s,
        jax.eval_shape(tx.init, params),
        jax.tree.map(lambda x: x.sharding, params),
        transform_non_params=lambda _: replicated,
    )


def init_state(tx, params):
    """`tx.init(params)` laid out by `state_shardings`."""
    return jax.jit(tx.init, out_shardings=state_shardings(tx, params))(params)
