"""SFT (assistant turns only, packed) on trl-lib/Capybara, Llama-3.1-8B-Instruct.

Topologies (the config argument; default v5p-8): v5p-8, v5p-32, 8xH100, 2x8xH100. bf16 compute, fp32 master
weights, remat, scanned layers; mesh and batch per topology in configs/recipes/_build.py (MODELS).
model.path: $JAXALIGN_MODELS/Llama-3.1-8B-Instruct (default ~/models/...), or --config.model.path=DIR.

  # TPU v5p-8 (launch/README.md):
  launch/tpu_vm.sh all --name=run1 --zone=us-east5-a --tpu-type=v5p-8 -- \
    --config=configs/recipes/sft_llama3_1_8b.py:v5p-8 --workdir=runs/sft_llama3_1_8b
  # 2x8xH100 (SLURM, launch/README.md):
  sbatch --nodes=2 launch/slurm.sbatch --config=configs/recipes/sft_llama3_1_8b.py:2x8xH100 \
    --workdir=/shared/runs/sft_llama3_1_8b
  # anywhere, one host:
  python -m jaxalign.main --config=configs/recipes/sft_llama3_1_8b.py:v5p-8 --workdir=/tmp/sft_llama3_1_8b
"""

import os

from jaxalign import defaults

BUILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build.py")


def get_config(arg=None):
    return defaults.load_config_file(BUILD, ("sft", "llama-3.1-8b", arg))
