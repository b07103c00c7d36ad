"""The Pallas attention kernels (splash: TPU; triton: GPU) in interpret mode on CPU against the reference
attention: values and gradients on packed rows (segments, padding), GQA, sliding windows, soft-caps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import kernels
from jaxalign.models.attention import attention_reference, segment_mask

B, T, H, K, D = 2, 96, 4, 2, 16


def _inputs():
    q = jax.random.normal(jax.random.key(0), (B, T, H, D))
    k = jax.random.normal(jax.random.key(1), (B, T, K, D))
    v = jax.random.normal(jax.random.key(2), (B, T, K, D))
    seg = np.concatenate([np.ones((B, 50)), 2 * np.ones((B, 40)), np.zeros((B, 6))], 1).astype(np.int32)
    seg[1, :10] = 0  # a left-padded row too
    return q, k, v, jnp.asarray(seg)


@pytest.mark.parametrize(
    "kernel,window,cap",
    [("splash", None, 0.0), ("splash", 7, 0.0), ("splash", None, 5.0), ("triton", None, 0.0)],
)
def test_kernel_equals_reference_values_and_gradients(kernel, window, cap):
    q, k, v, seg = _inputs()
    real = (seg != 0)[:, :, None, None]

    def ours(q, k, v):
        if kernel == "triton":
            return kernels.triton_attention(q, k, v, seg, D**-0.5)
        return kernels.splash_attention(q, k, v, seg, D**-0.5, window, cap)

    def ref(q, k, v):
        return attention_reference(q, k, v, segment_mask(seg, window), D**-0.5, logit_cap=cap)

    np.testing.assert_allclose(jnp.where(real, ours(q, k, v), 0), jnp.where(real, ref(q, k, v), 0), atol=1e-5)
    loss = lambda f: lambda *a: jnp.sum(jnp.where(real, f(*a), 0.0) ** 2)  # noqa: E731
    g1 = jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
    g2 = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_a_kernel_that_cannot_run_the_model_is_refused():
    from jaxalign import models

    with pytest.raises(
        ValueError, match="attention_impl='triton': the Triton kernel has no sliding-window mask"
    ):
        models.ModelConfig(
            vocab_size=32,
            hidden_size=16,
            num_layers=1,
            num_heads=2,
            num_kv_heads=2,
            head_dim=8,
            intermediate_size=16,
            sliding_window=4,
            attention_impl="triton",
        )


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["splash", "triton"])
def test_dpo_trains_with_a_pallas_kernel_as_with_auto(kernel, tmp_path, cli):
    """`--config.model.attention=<kernel>` through the CLI (interpret mode on this CPU): the start-up line
    names it, and two DPO steps log what the default attention's steps log."""
    import json
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    records = {}
    for attention in ("auto", kernel):
        wd = tmp_path / attention
        r = cli(
            "jaxalign.main",
            f"--config={os.path.join(root, 'configs', 'dpo.py')}",
            f"--workdir={wd}",
            f"--config.model.attention={attention}",
            "--config.train.num_steps=2",
            "--config.train.log_every=1",
            "--config.train.eval_every=0",
            "--config.data.eval=",
            "--config.train.export_hf=False",
        )
        assert r.returncode == 0, r.stderr[-2000:]
        if attention != "auto":
            assert f"Attention: {kernel} (Pallas, segment ids" in r.stdout
        with open(wd / "metrics.jsonl") as f:
            records[attention] = [json.loads(x) for x in f if "train/loss" in x]
    for a, b in zip(records["auto"], records[kernel]):
        for k in ("train/loss", "train/grad_norm", "train/logps/chosen"):
            assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(a[k])), (k, a[k], b[k])


def test_model_attention_values_are_checked(tmp_path, cli):
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = cli(
        "jaxalign.main",
        f"--config={os.path.join(root, 'configs', 'dpo.py')}",
        f"--workdir={tmp_path / 'r'}",
        "--config.model.attention=flash",
    )
    assert r.returncode == 2 and r.stderr.startswith("error: config.model.attention='flash': expected one of")
