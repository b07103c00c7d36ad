"""HF checkpoints at size: loading and export stream tensor by tensor (peak RSS measured in a fresh
process against the model's and the largest tensor's bytes), and an FSDP-sharded model on two processes
exports one checkpoint, each process writing its own files."""

import dataclasses
import filecmp
import inspect
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20

# ~162 MB of float32 parameters in 12 safetensors files; the largest tensors (embedding, LM head) 16 MB.
BIG = {
    "model_type": "llama",
    "vocab_size": 8192,
    "hidden_size": 512,
    "num_layers": 10,
    "num_heads": 8,
    "num_kv_heads": 8,
    "head_dim": 64,
    "intermediate_size": 1536,
    "max_position_embeddings": 64,
    "eos_token_id": 2,
}
SHARD_BYTES = 16 * MB
SLACK = 64 * MB  # XLA's compilations, allocator and interpreter noise


def random_params(config, seed=0):
    """Random parameters of our model's tree (shapes from jaxalign's init_params, without running it: XLA
    takes seconds to compile an init), the same on every process. The subprocesses get its source."""
    import jax
    import numpy as np

    from jaxalign.models import init_params

    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (rng.standard_normal(s.shape, np.float32) * 0.05).astype(s.dtype), shapes)


_RANDOM_PARAMS = inspect.getsource(random_params) + "\n"

# Runs in a fresh process: measures the peak RSS (VmHWM) of one save_hf_model or load_hf_model call above
# the RSS just before it (after imports, JAX's start and, for a save, the parameters), prints JSON.
_MEASURE = r"""
import dataclasses, gc, json, sys, time
import jax, numpy as np
from jaxalign.checkpoints import load_hf_model, save_hf_model
from jaxalign.models import ModelConfig, stack_layers

mode, path, scan, shard_bytes, cfg = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5]
config = ModelConfig(**json.loads(cfg))

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out

jax.jit(lambda x: x + 1)(np.ones(4)).block_until_ready()  # JAX started
if mode == "save":
    params = jax.device_put(random_params(dataclasses.replace(config, scan_layers=scan)))
    jax.block_until_ready(params)
last = None
for _ in range(30):  # until RSS stops falling (buffers freed in the background)
    gc.collect()
    time.sleep(0.1)
    rss = status()["VmRSS"]
    if last is not None and rss >= last:
        break
    last = rss
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
base = status()["VmRSS"]
t0 = time.perf_counter()
if mode == "save":
    save_hf_model(path, dataclasses.replace(config, scan_layers=scan), params, max_shard_bytes=shard_bytes)
else:
    loaded_config, params = load_hf_model(path, scan_layers=scan)
    jax.block_until_ready(params)
secs = time.perf_counter() - t0
peak = status()["VmHWM"]
nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
if mode == "load":  # the checkpoint holds random_params(config) (written by an unscanned save)
    ref = random_params(config)
    if scan:
        ref = stack_layers(ref, config.num_layers)
    assert jax.tree.structure(ref) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, params, ref)
print(json.dumps(dict(base=base, peak=peak, secs=secs, model_bytes=nbytes)))
"""


def _env(devices=1):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # freed large buffers go back to the OS (RSS falls again)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _measure(mode, path, scan):
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            _RANDOM_PARAMS + _MEASURE,
            mode,
            str(path),
            str(int(scan)),
            str(SHARD_BYTES),
            json.dumps(BIG),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    figures["increase"] = figures["peak"] - figures["base"]
    return figures


def _largest_hf_tensor(path):
    """Bytes of the largest tensor in a safetensors directory (from the headers)."""
    largest = 0
    for file in Path(path).glob("*.safetensors"):
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        sizes = [e - b for k, v in header.items() if k != "__metadata__" for b, e in [v["data_offsets"]]]
        largest = max([largest, *sizes])
    return largest


def _report(what, figures, largest):
    print(
        f"{what}: peak RSS +{figures['increase'] / MB:.1f} MB over the RSS before the call "
        f"(model {figures['model_bytes'] / MB:.1f} MB, "
        f"largest tensor {largest / MB:.1f} MB, shard limit {SHARD_BYTES / MB:.0f} MB) in {figures['secs']:.1f} s"
    )


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """A ~162 MB checkpoint in 12 files, written by save_hf_model in a fresh process (whose RSS is
    measured: test_export_streams reads the figures)."""
    path = tmp_path_factory.mktemp("big") / "hf"
    figures = _measure("save", path, scan=False)
    return path, figures


def test_checkpoint_is_sharded(big_checkpoint):
    path, figures = big_checkpoint
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 8 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in path.glob("*.safetensors")) == files  # no ".partial" left behind
    assert index["metadata"]["total_size"] == figures["model_bytes"]
    assert _largest_hf_tensor(path) == BIG["vocab_size"] * BIG["hidden_size"] * 4


@pytest.mark.parametrize("scan", [False, True])
def test_load_holds_the_model_and_a_few_tensors(big_checkpoint, scan):
    """Peak RSS of load_hf_model (1 CPU device: device memory is host memory) <= the model itself + 3
    largest tensors + slack: no second copy of the model (memory-mapped file pages, stacked layers)."""
    path, _ = big_checkpoint
    figures = _measure("load", path, scan)
    largest = _largest_hf_tensor(path)
    _report(f"load_hf_model(scan_layers={scan})", figures, largest)
    assert figures["increase"] <= figures["model_bytes"] + 3 * largest + SLACK


@pytest.mark.parametrize("scan", [False, True])
def test_export_streams(big_checkpoint, tmp_path, scan):
    """Peak RSS of save_hf_model above the parameters already in memory <= one file's bytes + 3 largest
    tensors + slack, well under the model's size: nothing gathers the model in host memory."""
    path, figures = big_checkpoint
    if scan:
        figures = _measure("save", tmp_path / "hf", scan=True)
    largest = _largest_hf_tensor(path)
    _report(f"save_hf_model(scan_layers={scan})", figures, largest)
    bound = SHARD_BYTES + 3 * largest + SLACK
    assert bound < figures["model_bytes"]
    assert figures["increase"] <= bound


# One of two processes (2 CPU devices each): the model FSDP-sharded over all 4 devices, exported with
# save_hf_model into one directory, then read back onto the same mesh by both.
_TWO_PROCESSES = r"""
import json, logging, sys
import jax, numpy as np

port, pid, path, shard_bytes, cfg = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
logging.basicConfig(format="%(message)s")
logging.getLogger("jaxalign.checkpoints").setLevel(logging.INFO)  # "process i wrote <file>"
from jaxalign.checkpoints import load_hf_model, save_hf_model
from jaxalign.models import ModelConfig, param_logical_axes
from jaxalign.sharding import logical_to_shardings, make_mesh

config = ModelConfig(**json.loads(cfg))
mesh = make_mesh(fsdp=-1)
assert jax.process_count() == 2 and mesh.shape["fsdp"] == 4, mesh.shape
# The same random values on both processes and in the test's one process, laid out FSDP-sharded:
# each device gets only its own part.
host = random_params(config)
shardings = logical_to_shardings(param_logical_axes(config), mesh, shapes=host)
params = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]), host, shardings)
del host
leaves = jax.tree.leaves(params)
assert all(not x.is_fully_addressable for x in leaves)
assert any(not x.is_fully_replicated for x in leaves)  # FSDP-sharded: no process holds these whole

save_hf_model(path, config, params, max_shard_bytes=shard_bytes)

_, loaded = load_hf_model(path, mesh=mesh, scan_layers=config.scan_layers)
assert jax.tree.structure(loaded) == jax.tree.structure(params)
for a, b in zip(leaves, jax.tree.leaves(loaded)):
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
    for sa, sb in zip(a.addressable_shards, b.addressable_shards):
        assert sa.index == sb.index
        np.testing.assert_array_equal(np.asarray(sa.data), np.asarray(sb.data))
print(f"process {pid}: read back identical", flush=True)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_config(family):
    from jaxalign.models import ModelConfig

    if family == "llama":
        return ModelConfig(
            model_type="llama",
            vocab_size=256,
            hidden_size=64,
            num_layers=3,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            intermediate_size=128,
            max_position_embeddings=64,
            eos_token_id=2,
            scan_layers=True,
        )
    return ModelConfig(  # GPT-2: fused c_attn (three parameters make one HF tensor), learned positions
        model_type="gpt2",
        vocab_size=256,
        hidden_size=64,
        num_layers=3,
        num_heads=4,
        num_kv_heads=4,
        head_dim=16,
        intermediate_size=256,
        max_position_embeddings=64,
        norm="layer",
        norm_eps=1e-5,
        activation="gelu_new",
        gated_mlp=False,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
        position_embedding="learned",
        eos_token_id=2,
        scan_layers=True,
    )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fsdp_export_on_two_processes(tmp_path, family):
    """Two processes (jax.distributed, gloo on CPU), the parameters FSDP-sharded over their 4 devices:
    file i is written by process i % 2, nothing else gathers the model on one host, and the checkpoint
    is byte for byte the one a single process writes from the same parameters; transformers loads it
    and gives our logits."""
    import transformers

    sys.path.insert(0, str(ROOT / "tests" / "models"))
    from hf_reference import TOL, jax_forward, padded_batch, torch_logits

    from jaxalign.checkpoints import save_hf_model

    config = _tiny_config(family)
    shard_bytes = 40_000
    multi = tmp_path / "multi"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _RANDOM_PARAMS + _TWO_PROCESSES,
                str(port),
                str(i),
                str(multi),
                str(shard_bytes),
                json.dumps(dataclasses.asdict(config)),
            ],
            cwd=ROOT,
            env=_env(devices=2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 150
    try:
        outs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the two-process export did not finish in 150 s (a hang in a collective?)")
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    for i, (out, _) in enumerate(outs):
        assert f"process {i}: read back identical" in out

    index = json.loads((multi / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 4
    writers = {}
    for _, err in outs:
        for pid, name in re.findall(r"process (\d) wrote \S*/(model-\S+\.safetensors)", err):
            writers[name] = int(pid)
    assert writers == {name: i % 2 for i, name in enumerate(files)}
    print(
        f"{family}: {len(files)} files, process 0 wrote {sorted(writers.values()).count(0)}, process 1 "
        f"{sorted(writers.values()).count(1)}"
    )

    # One process, the same parameters: the same files, byte for byte.
    single = tmp_path / "single"
    params = random_params(config)
    save_hf_model(single, config, params, max_shard_bytes=shard_bytes)
    names = sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in multi.iterdir()) == names
    _, mismatch, errors = filecmp.cmpfiles(single, multi, names, shallow=False)
    assert mismatch == errors == []

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(multi, attn_implementation="eager")
    reloaded.eval()
    rows, ids, pos, seg, slices = padded_batch(vocab=config.vocab_size)
    ours = np.asarray(jax_forward(config, params, ids, pos, seg))
    for i, (row, sl) in enumerate(zip(rows, slices)):
        assert np.abs(ours[i, sl] - torch_logits(reloaded, row)).max() <= TOL
