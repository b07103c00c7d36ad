"""Where metrics go: the console (with tokens/s and ETA), `<workdir>/metrics.jsonl` and TensorBoard."""

import json
import os
import time

from absl import logging


class MetricsWriter:
    """Writes on process 0 only. Every record is flushed, so nothing is lost on a crash."""

    def __init__(self, workdir, num_steps, enabled=True):
        self.enabled = enabled and bool(workdir)
        self.num_steps = num_steps
        self._t0 = time.time()
        self._last = (time.time(), 0)
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard is optional.
                logging.warning("tensorboardX is not installed: no TensorBoard event files.")

    def write(self, step, metrics, prefix="train", tokens=None, console=True, flops=None, peak_flops=None):
        """`metrics`: dict of python floats. `tokens`: tokens processed since the last train write; `flops`:
        their model FLOPs (`trainers.flops`) and `peak_flops` the devices' peak FLOP/s, for MFU."""
        record = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
        if prefix == "train" and tokens is not None:
            now = time.time()
            t_prev, s_prev = self._last
            dt = max(now - t_prev, 1e-9)
            record["perf/tokens_per_s"] = tokens / dt
            if flops is not None:
                record["perf/tflops_per_s"] = flops / dt / 1e12
                if peak_flops:
                    record["perf/mfu"] = flops / dt / peak_flops
            record["perf/step_time_s"] = dt / max(step - s_prev, 1)
            self._last = (now, step)
        if self._jsonl:
            self._jsonl.write(json.dumps({"step": int(step), **record}) + "\n")
            self._jsonl.flush()
        if self._tb:
            for k, v in record.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if console and self.enabled:
            shown = " ".join(
                f"{k.split('/', 1)[1] if k.startswith(prefix + '/') else k}={v:.4g}"
                for k, v in record.items()
                if not k.startswith("perf/step_time")
            )
            elapsed = time.time() - self._t0
            eta = elapsed / max(step, 1) * (self.num_steps - step) if prefix == "train" else 0.0
            eta_s = f" eta={eta:.0f}s" if prefix == "train" else ""
            print(f"[{prefix} {step}/{self.num_steps}]{eta_s} {shown}", flush=True)
        return record

    def close(self):
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()
