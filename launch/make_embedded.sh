#!/usr/bin/env bash
# Regenerates the embedded task from seeds: data + tokenizer, then the tiny checkpoints that the default
# configs start from (pre-training with configs/pretrain.py, SFT with configs/sft.py, a reward model with
# configs/reward.py). About 5 minutes on a 2-core CPU.
#   bash launch/make_embedded.sh [workdir]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/embedded}
ASSETS=jaxalign/assets/embedded
rm -rf "$WORK"
python -m jaxalign.data.embedded --out="$ASSETS"
python -m jaxalign.main --config=configs/pretrain.py --workdir="$WORK/pretrain"
rm -rf "$ASSETS/checkpoints/pretrain" && mkdir -p "$ASSETS/checkpoints" && cp -r "$WORK/pretrain/hf" "$ASSETS/checkpoints/pretrain"
python -m jaxalign.main --config=configs/sft.py --workdir="$WORK/sft"
rm -rf "$ASSETS/checkpoints/sft" && cp -r "$WORK/sft/hf" "$ASSETS/checkpoints/sft"
python -m jaxalign.main --config=configs/reward.py --workdir="$WORK/reward"
rm -rf "$ASSETS/checkpoints/reward" && cp -r "$WORK/reward/hf" "$ASSETS/checkpoints/reward"
du -sh "$ASSETS"
