"""SFT (assistant turns only, packed) on trl-lib/Capybara, gemma-1.1-2b-it (Gemma v1; Gemma 2 is not supported by jaxalign.models).

Topologies (the config argument; default v5e-8): v5e-8, v5p-8, 8xH100. bf16 compute, fp32 master
weights, remat, scanned layers; mesh and batch per topology in configs/recipes/_build.py (MODELS).
model.path: $JAXALIGN_MODELS/gemma-1.1-2b-it (default ~/models/...), or --config.model.path=DIR.

  # TPU v5e-8 (launch/README.md):
  launch/tpu_vm.sh all --name=run1 --zone=us-east5-a --tpu-type=v5litepod-8 -- \
    --config=configs/recipes/sft_gemma_2b.py:v5e-8 --workdir=runs/sft_gemma_2b
  # 8xH100 (SLURM, launch/README.md):
  sbatch --nodes=1 launch/slurm.sbatch --config=configs/recipes/sft_gemma_2b.py:8xH100 \
    --workdir=/shared/runs/sft_gemma_2b
  # anywhere, one host:
  python -m jaxalign.main --config=configs/recipes/sft_gemma_2b.py:v5e-8 --workdir=/tmp/sft_gemma_2b
"""

import os

from jaxalign import defaults

BUILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build.py")


def get_config(arg=None):
    return defaults.load_config_file(BUILD, ("sft", "gemma-2b", arg))
