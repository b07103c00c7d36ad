"""A real-size smoke run: DPO for a few steps on a random-init Qwen2.5-0.5B-shaped model on the CPU, through
the CLI (bf16 compute over float32 master weights, remat, scanned layers): step time and peak memory.

  python benchmarks/real_size_smoke.py                         # 4 pairs, 5 steps (about 7 min on 2 cores)
  python benchmarks/real_size_smoke.py --pairs=2 --steps=4
  python benchmarks/real_size_smoke.py --tiny --steps=3        # a 2-layer model: checks the script

What runs: `python -m jaxalign.main --config=benchmarks/real_size_smoke.py --config.model.dtype=bfloat16 ...`
in a subprocess: configs/dpo.py on its embedded preference pairs, with `model.path` empty and `model.init` =
the public config.json of Qwen/Qwen2.5-0.5B-Instruct (configs/recipes/models/Qwen2.5-0.5B-Instruct/; its
token ids left out, so the embedded tokenizer's are used). The embedded tokenizer has 384 tokens, but
the vocabulary stays 151,936 (its ids all fall below it): the tied embedding / LM head is real-size
(136M of the 494M parameters) and so is the log-softmax over it. The reference runs every step
(`dpo.precompute_ref=False`: precomputing it over the 3,100 pairs would take hours at this size on a CPU),
so the frozen copy is in memory. Eval and the HF export are off; the final checkpoint (params + Adam state,
5.1 GB here) cannot be turned off and is written to the temporary workdir (deleted afterwards unless
--keep).

Printed: the parameter count, `perf/step_time_s` of every step from `<workdir>/metrics.jsonl` (log_every=1;
the first includes compilation), the median of the others, the wall time to the first record (start-up,
random init and compilation included), the child's peak RSS when the last step was logged (VmHWM from
/proc, before the final checkpoint) and at exit (`getrusage(RUSAGE_CHILDREN).ru_maxrss`), the bytes of
params + Adam moments (+ the reference copy and the gradient) for comparison, and the 1-minute load
average at the start and end. Exits non-zero when the run fails.

Measured once on this repository's 2-core CPU container (23 GiB RAM, no GPU), the default
4 pairs (136-176 tokens a step after padding-free packing) and 5 steps; the 1-minute load average was 1.37
at the start, 6.24 at the end and up to 8.5 during the run (other jobs shared the 2 cores), so the step
times are upper bounds and vary by 1.7x:
  parameters 494,032,768 (494.0M; the tied embedding 136.1M), losses finite (no skipped update);
  step time 75.3 s (step 1, compilation included), then 60.2, 62.3, 76.8, 44.5 s: median 61.2 s
  (9-12 GFLOP/s of model FLOPs as perf/tflops_per_s counts them); 99 s wall to the first record
  (24 s of it before step 1: start-up and the random init); 401 s for the whole run (the final checkpoint, 5.1 GB, ~60 s);
  peak RSS 13.80 GiB, the same at the last step and at exit (the checkpoint did not raise it), against
  1.84 GiB of f32 params, 5.52 GiB with the Adam moments, 9.20 GiB with the frozen reference copy and
  the f32 gradient. Not broken down; plausibly the runtime (the --tiny run peaks at 0.92 GiB), bf16
  compute copies of the policy and the reference (1.84 GiB) and ~1.8 GiB of activations, logits chunks
  and XLA temporaries.
Compilation is cheap at this size (step 1 is ~15 s over the median) because the 24 layers are scanned.
"""

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_JSON = os.path.join(REPO, "configs", "recipes", "models", "Qwen2.5-0.5B-Instruct", "config.json")
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # the embedded tokenizer's are used instead
# --tiny: a 2-layer d=64 model of the same architecture (checks the script in seconds).
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY.update(num_key_value_heads=1, vocab_size=4096)


def model_init(arg=None):
    """The HF config fields of the random init: the shipped config.json without its token ids."""
    with open(MODEL_JSON) as f:
        hf = {k: v for k, v in json.load(f).items() if k not in TOKEN_IDS}
    if arg == "tiny":
        hf.update(TINY)
    elif arg:
        raise ValueError(f"config argument {arg!r}: expected nothing or 'tiny'")
    return hf


def get_config(arg=None):
    """For the CLI (`--config=benchmarks/real_size_smoke.py[:tiny]`): configs/dpo.py with `model.init` from
    the shipped Qwen2.5-0.5B config.json and the embedded tokenizer; the rest comes as --config.* flags."""
    import ml_collections

    from jaxalign import defaults

    c = defaults.load_config_file(os.path.join(REPO, "configs", "dpo.py"))
    with c.unlocked():
        c.model.path = ""
        c.model.tokenizer = defaults.asset("tokenizer")
        c.model.init = ml_collections.ConfigDict(model_init(arg))
    return c


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def vm_hwm_kib(pid):
    """Peak resident set (VmHWM) of a running process in KiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def param_count(init):
    """Exact parameter count of the model `init` describes (shapes only, nothing allocated)."""
    import jax

    from jaxalign import models

    mcfg = models.ModelConfig.from_hf(dict(init, bos_token_id=1, eos_token_id=2))
    shapes = jax.eval_shape(lambda: models.init_params(mcfg, jax.random.key(0)))
    return sum(x.size for x in jax.tree.leaves(shapes))


def gib(n_bytes):
    return f"{n_bytes / 2**30:.2f} GiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=4, help="train.batch_size (preference pairs a step)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--max_length", type=int, default=256)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer d=64 model (checks the script)")
    ap.add_argument("--workdir", default="", help="default: a temporary directory, deleted afterwards")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (checkpoint, metrics, log)")
    ap.add_argument("--extra", default="", help="more --config.* flags for the CLI, verbatim")
    args = ap.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="real_size_smoke_")
    os.makedirs(work, exist_ok=True)
    run_dir = os.path.join(work, "run")
    config_arg = ":tiny" if args.tiny else ""
    cmd = [
        sys.executable,
        "-m",
        "jaxalign.main",
        f"--config={os.path.abspath(__file__)}{config_arg}",
        f"--workdir={run_dir}",
        "--config.model.dtype=bfloat16",
        "--config.model.param_dtype=float32",
        "--config.model.remat=True",
        "--config.model.scan_layers=True",
        f"--config.train.batch_size={args.pairs}",
        f"--config.train.num_steps={args.steps}",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        "--config.data.eval=",
        f"--config.data.max_length={args.max_length}",
        f"--config.data.max_prompt_length={args.max_length // 2}",
        "--config.train.export_hf=False",
        "--config.train.checkpoint_every=0",
        "--config.train.checkpoint_every_minutes=0",
        "--config.dpo.precompute_ref=False",
        "--config.dpo.ref_cache_dir=",
    ] + args.extra.split()
    print("$ " + " ".join(cmd), flush=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [x for x in [env.get("PYTHONPATH")] if x])

    la_start, t0 = loadavg(), time.time()
    log_path = os.path.join(work, "run.log")
    lines = []
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )

    def pump():  # the child's output to the console and the log
        with open(log_path, "w") as log:
            for line in proc.stdout:
                lines.append(line)
                log.write(line)
                log.flush()
                sys.stdout.write(line)
                sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    seen, first_record_wall, hwm_at_last_step, hwm = 0, None, None, None
    while proc.poll() is None:
        time.sleep(0.5)
        hwm = vm_hwm_kib(proc.pid) or hwm
        try:
            with open(metrics_path) as f:
                n = sum(1 for line in f if "perf/step_time_s" in line)
        except OSError:
            n = 0
        if n > seen:
            seen = n
            if first_record_wall is None:
                first_record_wall = time.time() - t0
            if n >= args.steps:
                hwm_at_last_step = hwm
    reader.join()
    wall, la_end = time.time() - t0, loadavg()
    maxrss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    if proc.returncode != 0:
        print(f"error: the run exited with {proc.returncode}; log {log_path}", file=sys.stderr)
        sys.exit(proc.returncode or 1)

    with open(metrics_path) as f:
        recs = [r for r in map(json.loads, f) if "perf/step_time_s" in r]
    bad = [r["step"] for r in recs if not math.isfinite(r["train/loss"]) or r.get("train/nonfinite", 0)]
    describe = next((line.strip() for line in lines if line.startswith("Training ")), "")
    n = param_count(model_init("tiny" if args.tiny else None))
    later = [r["perf/step_time_s"] for r in recs[1:]]
    print()
    print(describe)
    print(f"parameters: {n:,} ({n / 1e6:.1f}M)")
    for r in recs:
        s = r["perf/step_time_s"]
        tokens = f", {r['perf/tokens_per_s'] * s:.0f} tokens" if "perf/tokens_per_s" in r else ""
        print(f"  step {r['step']}: {s:.2f} s{tokens}, loss {r.get('train/loss', float('nan')):.4f}")
    if later:
        print(f"step time after the first: median {statistics.median(later):.2f} s over {len(later)} steps")
    print(f"first step (compilation included): {recs[0]['perf/step_time_s']:.2f} s")
    if first_record_wall is not None:
        print(f"wall time to the first record (start-up, init, compilation): {first_record_wall:.0f} s")
    print(f"wall time of the whole run (final checkpoint included): {wall:.0f} s")
    if hwm_at_last_step:
        print(f"peak RSS when the last step was logged (VmHWM): {gib(hwm_at_last_step * 1024)}")
    print(f"peak RSS of the run (ru_maxrss, final checkpoint included): {gib(maxrss_kib * 1024)}")
    print(
        f"for comparison: params f32 {gib(4 * n)}, + Adam moments {gib(12 * n)}, "
        f"+ reference copy + gradient {gib(20 * n)}"
    )
    print(f"load average (1 min): {la_start:.2f} at the start, {la_end:.2f} at the end")
    if not args.workdir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if bad:
        print(f"error: non-finite loss or skipped update at steps {bad}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
