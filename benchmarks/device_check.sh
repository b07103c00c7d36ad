#!/usr/bin/env bash
# One short, prepared run on a lent accelerator (about 8 minutes on one H100): every figure in one JSON.
#   bash benchmarks/device_check.sh                 # writes $OUT/device_check.json ($OUT: the device tool's folder)
#   SMOKE=1 OUT=/tmp/dc bash benchmarks/device_check.sh   # tiny shapes: checks the script on a CPU
# Parts (each under its own timeout, so one failure leaves the others' figures):
#   dpo       benchmarks/gpu_step.py: DPO on the Llama-3.2-1B shape, 8 pairs × 2,048 tokens, bf16, packed
#             rows, the attention jaxalign picks (named in dpo.log): tokens/s, TFLOP/s, MFU
#   generate  benchmarks/device_check.py generate: the jitted sampler at batch 64 and 256 (1B shape, bf16)
#   plan      benchmarks/device_check.py plan: jaxalign.plan's predicted peak vs the device's measured peak
#   grpo      benchmarks/rl_step_split.py on configs/grpo.py: where an RL step's time goes
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
SMOKE=${SMOKE:-0}
if ! python -c "import jax, sys; sys.exit(jax.default_backend() == 'cpu' and '$SMOKE' != '1')" 2>/dev/null; then
  python -m pip install -q -e ".[gpu]" >"$OUT/pip.log" 2>&1
fi
python -c "import jax; print(jax.devices())" >"$OUT/devices.txt" 2>&1
if [ "$SMOKE" = 1 ]; then
  DPO_ARGS="--tiny --seq=128 --pairs=2 --steps=4 --log_every=2"; TINY=--tiny; GRPO_STEPS=2
else
  DPO_ARGS="--steps=20 --log_every=5"; TINY=; GRPO_STEPS=5
fi
timeout 300 python benchmarks/gpu_step.py $DPO_ARGS --workdir="$OUT/dpo_work" --json_out="$OUT/dpo.json" >"$OUT/dpo.log" 2>&1
echo "dpo: rc=$?" >>"$OUT/status.txt"
timeout 150 python benchmarks/device_check.py generate --out="$OUT/generate.json" $TINY >"$OUT/generate.log" 2>&1
echo "generate: rc=$?" >>"$OUT/status.txt"
timeout 150 python benchmarks/device_check.py plan --workdir="$OUT/dpo_work" --out="$OUT/plan.json" >"$OUT/plan.log" 2>&1
echo "plan: rc=$?" >>"$OUT/status.txt"
timeout 120 python benchmarks/rl_step_split.py --config=configs/grpo.py --steps=$GRPO_STEPS --warmup=1 >"$OUT/grpo.log" 2>&1
echo "grpo: rc=$?" >>"$OUT/status.txt"
python - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
result = {"status": open(os.path.join(out, "status.txt")).read().split("\n")}
for part in ("dpo", "generate", "plan"):
    path = os.path.join(out, f"{part}.json")
    result[part] = json.load(open(path)) if os.path.exists(path) else None
result["grpo_split"] = open(os.path.join(out, "grpo.log")).read().splitlines()[-6:]
json.dump(result, open(os.path.join(out, "device_check.json"), "w"), indent=1)
print(json.dumps(result, indent=1))
PY
