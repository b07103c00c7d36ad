"""Plumbing shared by the `*_cli_vs_trl.py` benchmarks: run jaxalign's CLI or a TRL side in a subprocess
and read back its timings, with the 1-minute load average at the start and end of each run."""

import json
import os
import shlex
import statistics
import subprocess
import sys
import time


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _call(cmd, cwd, env, log_path, who):
    la0, t0 = loadavg(), time.time()
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall, la1 = time.time() - t0, loadavg()
    if rc != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"{who} exited with {rc}; log {log_path}:\n{tail}")
    return {"wall_s": wall, "load_start": la0, "load_end": la1, "log": log_path}


def run_jaxalign(cmd, workdir, jaxalign_root, extra_path=()):
    """Runs `python -m jaxalign.main ...` (`cmd` without the interpreter) and times it by its own records:
    `perf/step_time_s` of `<workdir>/metrics.jsonl` after the first record (which includes compilation).

    Returns {step_s (median), mean_step_s, records [(step, s)], recs (the raw records), timed_steps, wall_s,
    load_start, load_end, log, describe (the "Training ..." start-up line)}.
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(
        [jaxalign_root, *extra_path] + [x for x in [env.get("PYTHONPATH")] if x]
    )
    print("  $ python " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    out = _call([sys.executable] + list(cmd), jaxalign_root, env, workdir + ".log", "jaxalign")
    with open(out["log"]) as f:
        out["describe"] = next((line.strip() for line in f if line.startswith("Training ")), "")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        recs = [r for r in map(json.loads, f) if "perf/step_time_s" in r]
    timed = recs[1:]
    if not timed:
        raise RuntimeError(
            f"no train record after the first one in {workdir}/metrics.jsonl: use --steps >= 2 * --log_every"
        )
    times = [r["perf/step_time_s"] for r in timed]
    out.update(
        step_s=statistics.median(times),
        mean_step_s=statistics.fmean(times),
        recs=recs,
        records=[(r["step"], r["perf/step_time_s"]) for r in recs],
        first_record_s=recs[0]["perf/step_time_s"],
        timed_steps=f"{recs[0]['step'] + 1}-{recs[-1]['step']}",
    )
    return out


def run_trl(script, argv, workdir, cwd):
    """Runs `script --side=trl <argv> --result=<workdir>/result.json` and returns that JSON plus the
    process's wall time and load averages."""
    os.makedirs(workdir, exist_ok=True)
    result = os.path.join(workdir, "result.json")
    cmd = [sys.executable, script, "--side=trl", f"--workdir={workdir}", f"--result={result}"] + list(argv)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false")
    info = _call(cmd, cwd, env, workdir + ".log", "TRL side")
    with open(result) as f:
        r = json.load(f)
    r.update(
        load_start=info["load_start"],
        load_end=info["load_end"],
        process_wall_s=info["wall_s"],
        log=info["log"],
    )
    return r


class StepTimer:
    """A transformers `TrainerCallback` (built lazily: transformers is imported by the TRL side only)
    timing each optimiser step from `on_step_begin` to `on_step_end`, and the end-to-end interval."""

    @staticmethod
    def make(after_step=None):
        """`after_step(timer)`, if given, runs after each step is timed (to collect the trainer's metrics)."""
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.step, self.ends, self.t0 = [], [], None

            def on_step_begin(self, a, state, control, **kw):
                self.t0 = time.perf_counter()

            def on_step_end(self, a, state, control, **kw):
                now = time.perf_counter()
                self.step.append(now - self.t0)
                self.ends.append(now)
                if after_step is not None:
                    after_step(self)

            def summary(self, skip):
                """Median/mean over steps after the first `skip` (jaxalign's warm-up record)."""
                steps = self.step[skip:]
                intervals = (
                    [b - a for a, b in zip(self.ends[skip - 1 :], self.ends[skip:])] if skip >= 1 else []
                )
                return {
                    "step_s": statistics.median(steps),
                    "mean_step_s": statistics.fmean(steps),
                    "interval_s": statistics.median(intervals) if intervals else float("nan"),
                    "first_steps_s": self.step[:skip],
                    "timed_steps": f"{skip + 1}-{len(self.step)}",
                    "num_steps": len(self.step),
                }

        return _Timer()
