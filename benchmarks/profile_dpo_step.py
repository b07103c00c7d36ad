"""Where a DPO step's time goes: the jitted step, loss, one model forward / forward+backward and one
layer's attention, timed alone on the batches the CLI would build (a profile, not a result).

  python benchmarks/dpo_cli_vs_trl.py --workdir=/tmp/bench --steps=12 --rounds=1   # makes model + data
  python benchmarks/profile_dpo_step.py --workdir=/tmp/bench --workload=var
  python benchmarks/profile_dpo_step.py --workdir=/tmp/bench --workload=uniform --packing=False

Medians of 6 calls after one warm-up, `jax.block_until_ready` around each; the model, tokenizer and
rows are `dpo_cli_vs_trl.py`'s (`<workdir>/model`, `<workdir>/<workload>.jsonl`).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn, *args, n=6):
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--workload", default="var", choices=["uniform", "var"])
    ap.add_argument("--packing", default="True", choices=["True", "False"])
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp
    from configs import dpo
    from jaxalign import sharding
    from jaxalign.models.attention import attend, segment_mask
    from jaxalign.trainers import objectives, setup
    from jaxalign.trainers.optim import make_optimizer
    from jaxalign.trainers.state import TrainState
    from jaxalign.trainers.step import make_train_step

    c = dpo.get_config()
    with c.unlocked():
        c.model.path = os.path.join(args.workdir, "model")
        c.data.train = os.path.join(args.workdir, f"{args.workload}.jsonl")
        c.data.eval = ""
        c.data.max_length, c.data.max_prompt_length = (128, 64) if args.workload == "uniform" else (512, 256)
        c.train.batch_size = 8
        c.dpo.rpo_alpha = 0.0
        c.dpo.precompute_ref = False
        c.data.packing = args.packing == "True"
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    run = setup.build_run(c, mesh)
    tx, schedule = make_optimizer(c.optimizer, 40)
    batches = [next(run.batches.iterator) for _ in range(6)]  # host batches, as the loop's source reads them
    run.batches.close()
    print("row shapes of 6 batches:", [b.get("input_ids", b.get("chosen_input_ids")).shape for b in batches])
    b = {k: v for k, v in batches[1].items() if k not in ("weight", "answer")}
    with jax.set_mesh(mesh):
        params, ref = run.params, run.ref_params
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.key(0)),
        )
        step = jax.jit(
            make_train_step(run.loss_fn, tx, grad_accum_steps=c.train.grad_accum_steps, schedule=schedule)
        )
        loss_fn = run.loss_fn  # the DPO loss (`objectives.make_dpo_loss`), as the step differentiates it
        rows = b if c.data.packing else objectives._pair(b)
        ids, pos, seg = rows["input_ids"], rows["positions"], rows["segment_ids"]
        apply = lambda p: run.model.apply({"params": p}, ids, pos, seg)
        cfg = run.model_config
        q = jnp.ones(ids.shape + (cfg.num_heads, cfg.head_dim))
        k = jnp.ones(ids.shape + (cfg.num_kv_heads, cfg.head_dim))
        mask = segment_mask(jnp.asarray(seg))
        att = lambda q, k, v: attend(q, k, v, mask, cfg.head_dim**-0.5, cfg.attention_impl, causal_self=True)
        rows_out = {
            "train step": timed(jax.jit(lambda s, x: step(s, x, ref)), state, b),  # all outputs: no dead code
            "loss forward (policy + reference)": timed(
                jax.jit(lambda p, r, x: loss_fn(p, r, x)[0]), params, ref, b
            ),
            "one model forward": timed(jax.jit(apply), params),
            "one model forward + backward": timed(
                jax.jit(jax.grad(lambda p: jnp.sum(apply(p)[..., 0]))), params
            ),
            "attention forward, one layer": timed(jax.jit(att), q, k, k),
            "attention forward + backward, one layer": timed(
                jax.jit(jax.grad(lambda q, k, v: jnp.sum(att(q, k, v)), argnums=(0, 1, 2))), q, k, k
            ),
        }
    for name, ms in rows_out.items():
        print(f"{name:42s} {ms:9.1f} ms")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
