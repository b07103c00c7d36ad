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
# The tool-use example's start (configs/grpo_tools.py): SFT further on the tool-use rows and the SFT rows.
python -m jaxalign.main --config=configs/sft.py --config.model.path="$ASSETS/checkpoints/sft" \
  --config.data.train="$ASSETS/tools_sft_train.jsonl,$ASSETS/sft_train.jsonl" --config.data.eval= \
  --config.train.num_steps=1500 --config.train.eval_every=0 --workdir="$WORK/sft_tools"
rm -rf "$ASSETS/checkpoints/sft_tools" && cp -r "$WORK/sft_tools/hf" "$ASSETS/checkpoints/sft_tools"
python -m jaxalign.main --config=configs/reward.py --workdir="$WORK/reward"
rm -rf "$ASSETS/checkpoints/reward" && cp -r "$WORK/reward/hf" "$ASSETS/checkpoints/reward"
du -sh "$ASSETS"
