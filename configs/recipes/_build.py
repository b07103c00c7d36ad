"""What the recipes in this directory share: the topologies, the models and one builder.

Not a recipe itself: each `configs/recipes/<objective>_<model>.py` calls
`defaults.load_config_file(<this file>, (objective, model, topology))`, which returns `get_config(...)` below.
A recipe is `configs/dpo.py` or `configs/sft.py` with the model, data, numerics, mesh and batch of one
(model, topology) pair; every field stays overridable with `--config.x=...`.

The batch sizes and lengths were sized by hand and each (model, topology) is checked by the memory planner
(`python -m jaxalign.plan --config=<recipe>:<topology> --topology=<topology>`: all fit, 30–90% of device
memory, README "Scaling out"); none has been measured on the hardware.
"""

import os

from jaxalign import defaults
from jaxalign.plan import TOPOLOGIES  # noqa: F401  (re-exported: recipes and tests read it here)

HERE = os.path.dirname(os.path.abspath(__file__))

# The topologies (devices, hosts, memory per device) are `jaxalign.plan.TOPOLOGIES`: the planner and the
# recipes share them.

# Where model directories (config.json + *.safetensors + tokenizer files, e.g. from
# `huggingface-cli download <hub> --local-dir $JAXALIGN_MODELS/<dir>`) are looked for; the same path on
# every host. `--config.model.path=` overrides it per run.
MODELS_ROOT = os.environ.get("JAXALIGN_MODELS", os.path.join("~", "models"))

DATA = {
    # TRL's conversational preference pairs (prompt + chosen/rejected message lists), train split.
    "dpo": "trl-lib/ultrafeedback_binarized",
    # Multi-turn chat transcripts ("messages"), train split.
    "sft": "trl-lib/Capybara",
}


def _mesh(data, fsdp, tensor=1):
    return dict(data=data, fsdp=fsdp, tensor=tensor)


# Per model: the recipe files' suffix, the HF directory name (its public config.json ships in models/<dir>/), the hub name it is
# downloaded from, the default topology, learning rates, and per topology the mesh, lengths and batches
# (dpo: pairs, sft: sequences; global).
MODELS = {
    "llama-3.2-1b": dict(
        file="llama3_2_1b",  # configs/recipes/{dpo,sft}_llama3_2_1b.py
        dir="Llama-3.2-1B-Instruct",
        hub="meta-llama/Llama-3.2-1B-Instruct",
        default="v5e-8",
        lr={"dpo": 1e-6, "sft": 2e-5},
        topologies={
            "v5e-8": dict(mesh=_mesh(1, 8), max_length=1024, dpo=32, sft=64),
            "v5p-8": dict(mesh=_mesh(1, 4), max_length=2048, dpo=64, sft=128),
            "8xH100": dict(mesh=_mesh(1, 8), max_length=2048, dpo=64, sft=128),
        },
    ),
    "gemma-2b": dict(
        file="gemma_2b",  # configs/recipes/{dpo,sft}_gemma_2b.py
        dir="gemma-1.1-2b-it",
        hub="google/gemma-1.1-2b-it",
        default="v5e-8",
        lr={"dpo": 1e-6, "sft": 2e-5},
        topologies={
            "v5e-8": dict(mesh=_mesh(1, 8), max_length=1024, dpo=32, sft=64),
            "v5p-8": dict(mesh=_mesh(1, 4), max_length=2048, dpo=64, sft=128),
            "8xH100": dict(mesh=_mesh(1, 8), max_length=2048, dpo=64, sft=128),
        },
    ),
    "llama-3.1-8b": dict(
        file="llama3_1_8b",  # configs/recipes/{dpo,sft}_llama3_1_8b.py
        dir="Llama-3.1-8B-Instruct",
        hub="meta-llama/Llama-3.1-8B-Instruct",
        default="v5p-8",
        lr={"dpo": 5e-7, "sft": 1e-5},
        topologies={
            "v5p-8": dict(mesh=_mesh(1, 4), max_length=2048, dpo=32, sft=64),
            "v5p-32": dict(mesh=_mesh(1, 16), max_length=2048, dpo=64, sft=128),
            "8xH100": dict(mesh=_mesh(1, 8), max_length=2048, dpo=32, sft=64),
            "2x8xH100": dict(mesh=_mesh(2, 8), max_length=2048, dpo=64, sft=128),
        },
    ),
    "qwen2.5-7b": dict(
        file="qwen2_5_7b",  # configs/recipes/{dpo,sft}_qwen2_5_7b.py
        dir="Qwen2.5-7B-Instruct",
        hub="Qwen/Qwen2.5-7B-Instruct",
        default="v5p-8",
        lr={"dpo": 5e-7, "sft": 1e-5},
        topologies={
            "v5p-8": dict(mesh=_mesh(1, 4), max_length=2048, dpo=32, sft=64),
            "v5p-32": dict(mesh=_mesh(1, 16), max_length=2048, dpo=64, sft=128),
            "8xH100": dict(mesh=_mesh(1, 8), max_length=2048, dpo=32, sft=64),
            "2x8xH100": dict(mesh=_mesh(2, 8), max_length=2048, dpo=64, sft=128),
        },
    ),
}


def model_config_json(model):
    """Path of the shipped public config.json of `model` (a MODELS key)."""
    return os.path.join(HERE, "models", MODELS[model]["dir"], "config.json")


def get_config(arg):
    """arg = (objective, model, topology or None/"" for the model's default)."""
    objective, model, topology = arg
    spec = MODELS[model]
    topology = topology or spec["default"]
    if topology not in spec["topologies"]:
        raise ValueError(
            f"{objective} recipe for {model}: unknown topology {topology!r}; "
            f"expected one of {', '.join(spec['topologies'])}"
        )
    t = spec["topologies"][topology]
    c = defaults.load_config_file(os.path.join(HERE, os.pardir, f"{objective}.py"))
    c.model.path = os.path.expanduser(os.path.join(MODELS_ROOT, spec["dir"]))
    c.model.dtype = "bfloat16"  # bf16 compute; master weights and Adam moments stay float32
    c.model.param_dtype = "float32"
    c.model.remat = True
    c.model.scan_layers = True
    c.data.train = DATA[objective]
    c.data.eval = ""  # a held-out file or directory of your own (hub datasets: the "eval" split)
    c.data.max_length = t["max_length"]
    c.data.max_prompt_length = t["max_length"] // 2
    c.data.tokenize = "auto"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = t["mesh"]["data"], t["mesh"]["fsdp"], t["mesh"]["tensor"]
    c.train.batch_size = t[objective]
    c.train.grad_accum_steps = 1
    c.train.num_steps = 1000 if objective == "dpo" else 2000
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.eval_batch_size = t[objective]
    c.train.checkpoint_every = 200
    c.train.checkpoint_every_minutes = 30.0
    c.optimizer.learning_rate = spec["lr"][objective]
    c.optimizer.warmup_steps = c.train.num_steps // 10
    c.optimizer.schedule = "cosine"
    c.optimizer.end_lr_ratio = 0.0
    c.optimizer.weight_decay = 0.0
    if objective == "dpo":
        c.dpo.beta = 0.1
        c.dpo.loss_type = "sigmoid"
        c.dpo.rpo_alpha = 0.0  # plain DPO (configs/dpo.py's embedded task uses RPO)
        c.dpo.precompute_ref = True  # one reference pass up front: no reference copy in memory
    return c
