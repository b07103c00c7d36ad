"""Peak memory and step time: LoRA DPO vs full-parameter DPO, same model, same batch.

  python benchmarks/lora_memory.py            # 4-layer d=256 Llama (V=2048), 8 pairs × 128 tokens, r=8
  python benchmarks/lora_memory.py --layers=8 --hidden=512 --rank=16 --remat

Full DPO: policy + frozen reference copy + AdamW (m, v) on every parameter, the trainer's own
  `jaxalign.trainers.step.make_train_step` on `make_loss_fn` (DPO).
LoRA DPO: frozen base + adapters r on q, k, v, o, gate, up, down + AdamW on the adapters only; the
  reference is the base with adapters off (no copy). Same objective glue (`make_dpo_loss` on a
  `LoraModel`, wrapped by `lora.lora_loss_fn`) and the same step, make_train_step, with (adapters, base)
  as its (params, frozen).
Both: float32, sigmoid DPO (beta 0.1), state donated, reference/base not donated.

Memory, per arm (each arm runs in its own process so RSS figures don't mix):
  compiled peak = memory_analysis() of the compiled step: argument + output + temp − alias bytes.
    Its arguments are the train state, the reference (or base) and the batch, so this already counts
    the persistent state; "persistent" (params, reference, optimiser state) is shown as a breakdown,
    not added a second time.
  RSS growth = peak process RSS sampled every ms during the timed steps minus the RSS just before the
    state is allocated (after compilation, so compiler memory is excluded). Linux only.
Step time: median over the timed steps after one warm-up step.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class _RssPeak:
    """Samples RSS every `interval` s in a thread; `.peak` is the largest value seen."""

    def __init__(self, interval=0.001):
        self.interval, self.peak, self._stop = interval, _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _nbytes(tree) -> int:
    import jax

    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def run_arm(args) -> dict:
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np
    import optax

    from jaxalign import lora
    from jaxalign.models import ModelConfig, Transformer, init_params
    from jaxalign.trainers.state import TrainState
    from jaxalign.trainers.step import make_loss_fn, make_train_step

    heads = max(args.hidden // 64, 1)
    mcfg = ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=args.hidden // heads,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=512,
        remat=args.remat,
        scan_layers=args.scan_layers,
    )
    model = Transformer(mcfg)
    config = ml_collections.ConfigDict(
        dict(
            objective="dpo",
            dpo=dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0),
            lora=dict(enabled=False),  # the LoRA arm wraps the loss itself (lora.lora_loss_fn)
        )
    )
    tx = optax.adamw(1e-5)
    lora_cfg = lora.LoraConfig(rank=args.rank, alpha=2.0 * args.rank, target_modules=lora.ALL_PROJECTIONS)

    # A batch of pairs: prompt_len prompt tokens then completion_len completion tokens (loss on those).
    b, t = args.pairs, args.prompt_len + args.completion_len
    rng = np.random.default_rng(0)
    mask = np.zeros((b, t), np.float32)
    mask[:, args.prompt_len :] = 1.0
    batch = {}
    for side in ("chosen", "rejected"):
        ids = rng.integers(3, args.vocab, size=(b, t + 1)).astype(np.int32)
        batch.update(
            {
                f"{side}_input_ids": ids[:, :-1],
                f"{side}_targets": ids[:, 1:],
                f"{side}_loss_mask": mask,
                f"{side}_positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
                f"{side}_segment_ids": np.ones((b, t), np.int32),
            }
        )

    if args.arm == "full":
        step = make_train_step(make_loss_fn(model, config), tx)

        def make_state(key):
            params = init_params(mcfg, key)
            return TrainState(
                jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(jax.random.key(0))
            ), params  # ref = a copy
    else:
        loss_fn = lora.lora_loss_fn(make_loss_fn(lora.LoraModel(model, lora_cfg), config))
        step = make_train_step(loss_fn, tx)  # state.params = the adapters, frozen = the base

        def make_state(key):
            base = init_params(mcfg, key)
            adapters = lora.init_lora(model, base, lora_cfg, jax.random.fold_in(key, 1))
            return TrainState(
                jnp.zeros((), jnp.int32), adapters, tx.init(adapters), jax.random.key_data(jax.random.key(0))
            ), base

    # Compile from shapes first, so no state exists yet and compiler memory is out of the RSS figure.
    abstract_state, abstract_ref = jax.eval_shape(make_state, jax.random.key(0))
    jitted = jax.jit(step, donate_argnums=0)
    t0 = time.perf_counter()
    compiled = jitted.lower(abstract_state, batch, abstract_ref).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    peak_compiled = (
        ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes
    )

    rss0 = _rss_bytes()
    with _RssPeak() as rss:
        state, ref = jax.jit(make_state)(jax.random.key(0))
        if args.arm == "full":
            ref = jax.tree.map(jnp.copy, ref)  # the frozen reference: a second copy of the policy
        jax.block_until_ready((state, ref))
        persistent = {
            "params": _nbytes(state.params),
            "reference_or_base": _nbytes(ref),
            "optimizer": _nbytes(state.opt_state),
        }
        times = []
        for i in range(args.steps + 1):
            t1 = time.perf_counter()
            state, metrics = compiled(state, batch, ref)
            jax.block_until_ready(metrics)
            if i:
                times.append(time.perf_counter() - t1)
    return dict(
        arm=args.arm,
        compiled_peak=peak_compiled,
        argument=ma.argument_size_in_bytes,
        output=ma.output_size_in_bytes,
        temp=ma.temp_size_in_bytes,
        alias=ma.alias_size_in_bytes,
        persistent=persistent,
        rss_growth=rss.peak - rss0 if rss0 else None,
        step_s=statistics.median(times),
        compile_s=compile_s,
        loss=float(metrics["loss"]),
        trainable=sum(x.size for x in jax.tree.leaves(state.params)),
        device=str(jax.devices()[0].platform),
    )


def _mb(x):
    return "n/a" if x is None else f"{x / 2**20:8.1f} MB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=64)
    ap.add_argument("--completion_len", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--remat", action="store_true", help="remat every block (both arms)")
    ap.add_argument("--scan_layers", action="store_true", help="nn.scan over blocks (both arms)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--arm", choices=("full", "lora"), help=argparse.SUPPRESS)  # internal: one arm
    args = ap.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args)))
        return
    results = {}
    for arm in ("full", "lora"):
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], f"--arm={arm}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[arm] = json.loads(out.strip().splitlines()[-1])
    full, lo = results["full"], results["lora"]
    print(
        f"model: {args.layers} layers, d={args.hidden}, V={args.vocab}; batch {args.pairs} pairs × "
        f"{args.prompt_len + args.completion_len} tokens; LoRA r={args.rank} on q,k,v,o,gate,up,down; "
        f"remat={args.remat}; scan_layers={args.scan_layers}; device={full['device']}"
    )
    print(f"{'':28s}{'full DPO':>14s}{'LoRA DPO':>14s}{'ratio':>9s}")
    rows = [
        ("trainable parameters", full["trainable"], lo["trainable"], str),
        ("compiled step peak", full["compiled_peak"], lo["compiled_peak"], _mb),
        ("  arguments", full["argument"], lo["argument"], _mb),
        ("  temporaries", full["temp"], lo["temp"], _mb),
        ("  outputs - aliased", full["output"] - full["alias"], lo["output"] - lo["alias"], _mb),
    ]
    rows += [
        (f"  persistent: {k}", full["persistent"][k], lo["persistent"][k], _mb) for k in full["persistent"]
    ]
    rows += [
        ("RSS growth (steps)", full["rss_growth"], lo["rss_growth"], _mb),
        ("step time (median)", full["step_s"], lo["step_s"], lambda s: f"{s * 1e3:8.1f} ms"),
    ]
    for name, f, l, fmt in rows:
        ratio = f"{l / f:8.1%}" if f else ""
        print(f"{name:28s}{fmt(f):>14s}{fmt(l):>14s} {ratio}")
    ratio = lo["compiled_peak"] / full["compiled_peak"]
    print(
        f"LoRA / full compiled peak memory: {ratio:.1%} (goal <= 35%): {'PASS' if ratio <= 0.35 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
