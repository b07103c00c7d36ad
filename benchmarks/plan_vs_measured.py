"""`jaxalign.plan`'s per-device total against the memory a real train step takes on this CPU.

  python benchmarks/plan_vs_measured.py                 # every case below, one subprocess each
  python benchmarks/plan_vs_measured.py --case=dpo      # one case (tests/test_plan.py runs this)

Each case is a config (a random-init Llama-shaped model on the embedded tokenizer, rows whose every
sequence is `data.max_length` tokens, so that the real batches have the planned, worst-case shape). In a
fresh process on one CPU device (`MALLOC_MMAP_THRESHOLD_=65536`: freed large buffers go back to the
system, so resident memory follows the live buffers):
  1. `jaxalign.plan.make_plan` compiles the step ahead of time and reports XLA's total;
  2. the trainer's own `loop.build` makes the state, one step runs (compiling it), then twice: a pause (the
     runtime frees a step's temporaries after it returns), the peak resident memory reset
     (`/proc/self/clear_refs`), one step;
  measured = the bytes of the step's inputs (state, batch, reference: `nbytes` of the arrays) + the larger
  rise of peak resident memory during those steps (their temporaries and non-donated outputs).
The ratio plan / measured is printed; `tests/test_plan.py` holds it within 10%.

Measured on this 2-core CPU (load average in the output line):
  see the README's "Scaling out" section for the figures of the last run.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (objective config file, overrides). Models: Llama-shaped, random init, embedded tokenizer.
MODEL = {
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
}
CASES = {
    # DPO with the reference model in memory, padded rows (no packing), no remat.
    "dpo": ("dpo.py", {"dpo.precompute_ref": False, "dpo.rpo_alpha": 0.0, "data.packing": False}),
    # SFT, bf16 compute under remat and scanned layers, two micro-batches.
    "sft": (
        "sft.py",
        {
            "model.dtype": "bfloat16",
            "model.remat": True,
            "model.scan_layers": True,
            "train.grad_accum_steps": 2,
            "data.packing": False,
        },
    ),
}


def make_config(case, data_file):
    from jaxalign import defaults

    file, overrides = CASES[case]
    c = defaults.load_config_file(os.path.join(ROOT, "configs", file))
    c.model.path = ""
    c.model.tokenizer = defaults.asset("tokenizer")
    with c.model.unlocked():
        c.model.init = dict(MODEL)
    c.data.train, c.data.eval = data_file, ""
    c.data.max_length, c.data.max_prompt_length = 256, 128
    c.data.length_buckets = 1
    c.train.batch_size, c.train.num_steps, c.train.eval_every = 8, 10, 0
    c.train.export_hf = False
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def write_rows(case, path):
    """Rows whose sequences fill `max_length` (the planner's worst case is then the real shape)."""
    from jaxalign.plan import _long_text

    long = _long_text(1024)
    row = (
        {"prompt": long, "chosen": long, "rejected": long}
        if case == "dpo"
        else {"prompt": long, "completion": long}
    )
    with open(path, "w") as f:
        for _ in range(64):
            f.write(json.dumps(row) + "\n")


def _rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure(case, workdir):
    """In this process (one CPU device): (planned bytes, measured bytes)."""
    import jax

    from jaxalign import sharding
    from jaxalign.plan import Topology, make_plan
    from jaxalign.trainers import loop

    os.makedirs(workdir, exist_ok=True)
    data_file = os.path.join(workdir, "rows.jsonl")
    write_rows(case, data_file)
    config = make_config(case, data_file)
    plan = make_plan(config, Topology("1xcpu", 1, 1, None, "cpu"), devices=jax.devices()[:1])

    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    run, state, train_step = loop.build(config, mesh)
    with jax.set_mesh(mesh):
        state, metrics, _ = loop.one_step(run, train_step, state)  # compiles
        jax.block_until_ready((state, metrics))
        rises = []
        for _ in range(2):
            batch, _, _ = run.batches.next(state)
            inputs = sum(x.nbytes for x in jax.tree.leaves((state, batch, run.ref_params)))
            jax.block_until_ready(batch)
            time.sleep(1.0)  # the last step's temporaries are freed after it returns, in another thread
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # peak resident memory := current
            before = _rss("VmRSS")
            state, metrics = train_step(state, batch, run.ref_params)
            jax.block_until_ready((state, metrics))
            rises.append(_rss("VmHWM") - before)
        rise = max(rises)
    run.batches.close()
    return plan.total, inputs + rise


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=sorted(CASES), action="append")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", default="/tmp/plan_vs_measured")
    args = p.parse_args()
    cases = args.case or sorted(CASES)
    if args.child:
        planned, measured = measure(cases[0], os.path.join(args.workdir, cases[0]))
        print(json.dumps({"case": cases[0], "planned": planned, "measured": measured}), flush=True)
        return
    env = dict(
        os.environ, MALLOC_MMAP_THRESHOLD_="65536", XLA_FLAGS="--xla_force_host_platform_device_count=1"
    )
    worst = 0.0
    for case in cases:
        cmd = [sys.executable, __file__, "--child", f"--case={case}", f"--workdir={args.workdir}"]
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            sys.stderr.write(r.stderr[-3000:])
            sys.exit(r.returncode)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        ratio = out["planned"] / out["measured"]
        worst = max(worst, abs(ratio - 1))
        print(
            f"{case}: planned {out['planned'] / 2**20:.0f} MiB, measured {out['measured'] / 2**20:.0f} MiB, "
            f"plan/measured {ratio:.3f} (load average {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    print(f"largest deviation {100 * worst:.1f}%")


if __name__ == "__main__":
    main()
