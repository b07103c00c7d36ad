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
