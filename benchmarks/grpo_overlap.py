"""Off-policy overlap (`rollout.max_staleness`, `mesh.rollout_devices`) on W-GRPO, through the CLI.

This is a benchmark, not a test: it prints timings and asserts nothing. From the repository root:

  python benchmarks/grpo_overlap.py                      # 2 rounds of 20 steps, W-GRPO
  python benchmarks/grpo_overlap.py --workload=var       # W-GRPO-var
  python benchmarks/grpo_overlap.py --steps=8 --log_every=2 --rounds=1   # does it run?

The model, tokenizer, prompts, reward and every GRPO setting are those of `grpo_cli_vs_trl.py` (imported
from it: a random-init Llama d 256, 4 layers, vocab 1024; 8 prompts × 8 samples; <= 64 new tokens, or
<= 128 with 26 stop ids for W-GRPO-var; beta 0.04; one update per rollout). Each round runs, one after the
other on the same machine:

  on-policy, 1 device           the default (what grpo_cli_vs_trl.py times against TRL)
  max_staleness=1, 1 device     the next batch sampled while the host decodes and scores this one and the
                                device updates (interleaved on one device)
  on-policy, 4+4 of 8 devices   `XLA_FLAGS=--xla_force_host_platform_device_count=8`,
                                `mesh.rollout_devices=4`: the sampler on its own 4 devices, the update on
                                the other 4, one after the other
  max_staleness=1, 4+4          the same with the two running at once
  split, 4+4                    `rl_step_split.py` with the 4+4 on-policy flags: sample (weights copied to
                                the sampler's devices + the sampler), score (forward passes + host rewards)
                                and update, each blocked on alone

Every CLI figure is `perf/step_time_s` of `metrics.jsonl` after the first record (compilation), median.
Printed: each run's ms/step, the issue-24 goal's ratio step(max_staleness=1, 4+4) / max(sample, score +
update) of the split (<= 1.15 is the goal: the shorter side hidden behind the longer), and the 1-minute load
average at the start and end of every run. The 8 "devices" share this machine's cores: two programs at once
each run slower than alone (printed by the ratio of the overlapped step to the sum of the phases).
"""

import argparse
import os
import re
import shlex
import statistics
import sys
import tempfile
import types

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
import cli_runner  # noqa: E402
import dpo_cli_vs_trl as dpo  # noqa: E402
import grpo_cli_vs_trl as grpo  # noqa: E402

EIGHT = "--xla_force_host_platform_device_count=8"
RUNS = (  # name, XLA_FLAGS, extra flags
    ("on-policy, 1 device", "", []),
    ("max_staleness=1, 1 device", "", ["--config.rollout.max_staleness=1"]),
    ("on-policy, 4+4 of 8", EIGHT, ["--config.mesh.rollout_devices=4"]),
    ("max_staleness=1, 4+4", EIGHT, ["--config.mesh.rollout_devices=4", "--config.rollout.max_staleness=1"]),
)


def run_cli(args, flags, xla, workdir):
    cmd = ["-m", "jaxalign.main", f"--workdir={workdir}"] + flags
    old = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = xla
    try:
        return cli_runner.run_jaxalign(cmd, workdir, REPO, extra_path=[BENCH])
    finally:
        if old is None:
            os.environ.pop("XLA_FLAGS")
        else:
            os.environ["XLA_FLAGS"] = old


def run_split(args, flags, workdir):
    cmd = [
        os.path.join(BENCH, "rl_step_split.py"),
        f"--warmup={args.log_every}",
        f"--steps={args.steps - args.log_every}",
    ] + [f for f in flags if f.startswith("--config")]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=EIGHT)
    env["PYTHONPATH"] = os.pathsep.join([REPO, BENCH] + [x for x in [env.get("PYTHONPATH")] if x])
    print("  $ XLA_FLAGS=" + EIGHT + " python " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    info = cli_runner._call([sys.executable] + cmd, REPO, env, workdir + ".log", "rl_step_split")
    with open(info["log"]) as f:
        text = f.read()
    ms = {
        m[1]: float(m[2])
        for m in re.finditer(r"^\s+(sample|score/device|score/host|update)\s+([\d.]+) ms", text, re.MULTILINE)
    }
    return {
        "sample": ms["sample"] / 1e3,
        "score": (ms["score/device"] + ms["score/host"]) / 1e3,
        "update": ms["update"] / 1e3,
        **info,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--log_every", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workload", default="fixed", choices=["fixed", "var"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()
    root = args.workdir or tempfile.mkdtemp(prefix="grpo_overlap_")
    model_dir = os.path.join(root, "model")
    tok, words, p = dpo.make_model_and_tokenizer(model_dir, args.seed)
    if args.workload == "var":
        grpo.make_var_model(model_dir, os.path.join(root, "model_var"), tok)
        model_dir = os.path.join(root, "model_var")
    rows = grpo.make_prompts(args.steps * grpo.PROMPTS, tok, words, p, args.seed)
    data_path = os.path.join(root, "prompts.jsonl")
    with open(data_path, "w") as f:
        for r in rows:
            f.write(__import__("json").dumps(r) + "\n")
    flags = grpo.jaxalign_config_flags(
        types.SimpleNamespace(
            workload=args.workload, steps=args.steps, log_every=args.log_every, jax_args=""
        ),
        model_dir,
        data_path,
    )
    name = "W-GRPO" if args.workload == "fixed" else "W-GRPO-var"
    print(
        f"{name}: workdir {root}; {args.steps} steps, timed {args.log_every + 1}-{args.steps}; cpus={os.cpu_count()}"
    )
    results = {n: [] for n, _, _ in RUNS}
    splits = []
    for rnd in range(args.rounds):
        for n, xla, extra in RUNS:
            slug = re.sub(r"[^A-Za-z0-9]+", "_", n).strip("_")
            out = run_cli(args, flags + extra, xla, os.path.join(root, f"r{rnd}_{slug}"))
            out["name"] = n
            results[n].append(out)
            print(
                f"round {rnd + 1} {n:<28} {1e3 * out['step_s']:8.1f} ms/step  load {out['load_start']:.2f} -> "
                f"{out['load_end']:.2f}",
                flush=True,
            )
        sp = run_split(args, flags + ["--config.mesh.rollout_devices=4"], os.path.join(root, f"r{rnd}_split"))
        splits.append(sp)
        print(
            f"round {rnd + 1} split, 4+4: sample {1e3 * sp['sample']:.0f} score {1e3 * sp['score']:.0f} update "
            f"{1e3 * sp['update']:.0f} ms  load {sp['load_start']:.2f} -> {sp['load_end']:.2f}",
            flush=True,
        )
    med = {n: statistics.median(o["step_s"] for o in v) for n, v in results.items()}
    sample, score, update = (statistics.median(s[k] for s in splits) for k in ("sample", "score", "update"))
    print(f"\n{name}, median over {args.rounds} round(s):")
    for n in med:
        print(f"  {n:<28} {1e3 * med[n]:8.1f} ms/step")
    over = med["max_staleness=1, 4+4"]
    bound = max(sample, score + update)
    print(
        f"  split 4+4 (alone): sample {1e3 * sample:.0f} ms, score + update {1e3 * (score + update):.0f} ms; "
        f"max {1e3 * bound:.0f}, sum {1e3 * (sample + score + update):.0f}"
    )
    print(f"  overlapped 4+4 step / max(sample, score + update) = {over / bound:.2f}  (goal <= 1.15)")
    print(f"  overlapped 4+4 step / sum of the phases = {over / (sample + score + update):.2f}")
    print(
        f"  1 device: max_staleness=1 / on-policy = {med['max_staleness=1, 1 device'] / med['on-policy, 1 device']:.2f}"
    )
    print(
        "  load averages: "
        + "; ".join(
            f"{o['name']}: {o['load_start']:.2f}->{o['load_end']:.2f}" for v in results.values() for o in v
        )
    )


if __name__ == "__main__":
    main()
