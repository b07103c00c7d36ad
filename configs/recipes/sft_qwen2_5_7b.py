"""SFT (assistant turns only, packed) on trl-lib/Capybara, Qwen2.5-7B-Instruct.

Topologies (the config argument; default v5p-8): v5p-8, v5p-32, 8xH100, 2x8xH100. bf16 compute, fp32 master
weights, remat, scanned layers; mesh and batch per topology in configs/recipes/_build.py (MODELS).
model.path: $JAXALIGN_MODELS/Qwen2.5-7B-Instruct (default ~/models/...), or --config.model.path=DIR.

  # TPU v5p-8 (launch/README.md):
  launch/tpu_vm.sh all --name=run1 --zone=us-east5-a --tpu-type=v5p-8 -- \
    --config=configs/recipes/sft_qwen2_5_7b.py:v5p-8 --workdir=runs/sft_qwen2_5_7b
  # 2x8xH100 (SLURM, launch/README.md):
  sbatch --nodes=2 launch/slurm.sbatch --config=configs/recipes/sft_qwen2_5_7b.py:2x8xH100 \
    --workdir=/shared/runs/sft_qwen2_5_7b
  # anywhere, one host:
  python -m jaxalign.main --config=configs/recipes/sft_qwen2_5_7b.py:v5p-8 --workdir=/tmp/sft_qwen2_5_7b
"""

import os

from jaxalign import defaults

BUILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build.py")


def get_config(arg=None):
    return defaults.load_config_file(BUILD, ("sft", "qwen2.5-7b", arg))
