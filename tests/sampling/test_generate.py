"""generate(): cache decode equals full forwards, stopping, padding, log-probs, sharded = single device; a
multi-turn episode's next turn on the kept cache (make_continue_fn) equals a fresh prompt of its context."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import models, sharding
from jaxalign.sampling import (
    generate,
    left_pad,
    make_continue_fn,
    make_generate_fn,
    process_logits,
    to_training_batch,
)
from jaxalign.sampling.generate import Stage, stages

# Large init so the tiny random model's greedy choices are decisive (no float near-ties between paths).
CFG = models.ModelConfig(
    vocab_size=64,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    intermediate_size=64,
    initializer_range=0.5,
)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12], [20, 21, 22, 23]]  # left-padded to P = 7
N = 8


def _init(cfg):
    """Random params; jitted, because eager linen init runs op by op (seconds on a busy CPU)."""
    return jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.key(0))


@pytest.fixture(scope="module")
def setup():
    model = models.Transformer(CFG)
    params = _init(CFG)
    return model, params, left_pad(PROMPTS, pad_id=0)


def _run(setup, **kw):
    model, params, batch = setup
    kw.setdefault("max_new_tokens", N)
    return jax.device_get(
        generate(model, params, batch["prompt_ids"], batch["prompt_segment_ids"], jax.random.key(1), **kw)
    )


def _greedy_reference(model, params, prompt, n, width=16):
    """A full forward without cache per new token (right-padded to `width`: one compilation)."""
    forward = jax.jit(lambda p, ids, seg: model.apply({"params": p}, ids, jnp.arange(width)[None], seg))
    seq = list(prompt)
    for _ in range(n):
        ids = np.zeros((1, width), np.int32)
        ids[0, : len(seq)] = seq
        logits = forward(params, ids, (np.arange(width) < len(seq))[None].astype(np.int32))
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt) :]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_greedy_equals_full_forward_argmax(setup, scan_layers):
    model, params, batch = setup
    if scan_layers:
        cfg = CFG.replace(scan_layers=True)
        model, params = models.Transformer(cfg), _init(cfg)
    # With scan_layers also a cache grown in buckets (stacked [L, B, S, K, Dh] k/v).
    out = jax.device_get(
        generate(
            model,
            params,
            batch["prompt_ids"],
            batch["prompt_segment_ids"],
            None,
            max_new_tokens=N,
            temperature=0.0,
            cache_buckets=3 if scan_layers else 1,
        )
    )
    for row, prompt in enumerate(PROMPTS):
        assert out.tokens[row].tolist() == _greedy_reference(model, params, prompt, N), row
    np.testing.assert_array_equal(out.mask, 1)
    np.testing.assert_array_equal(out.lengths, N)


def test_logprobs_equal_full_forward(setup):
    """Sampled (temperature 0.7, top-k 20) tokens: model_logprobs = log_softmax of one forward over
    prompt + completion, logprobs = the same under the processed (sampling) logits."""
    model, params, batch = setup
    out = _run(setup, temperature=0.7, top_k=20)
    tb = to_training_batch(batch["prompt_ids"], batch["prompt_segment_ids"], out)
    logits = model.apply({"params": params}, tb["input_ids"], tb["positions"], tb["segment_ids"])

    def at_targets(lp):
        return jnp.take_along_axis(lp, tb["targets"][..., None], -1)[..., 0] * tb["loss_mask"]

    np.testing.assert_allclose(at_targets(jax.nn.log_softmax(logits)), tb["model_logprobs"], atol=2e-4)
    np.testing.assert_allclose(
        at_targets(jax.nn.log_softmax(process_logits(logits, 0.7, 20))), tb["logprobs"], atol=2e-4
    )
    assert np.all(out.logprobs < 0) and np.all(out.model_logprobs < 0)
    assert tb["loss_mask"].sum() == out.mask.sum() == len(PROMPTS) * N


def test_eos_rows_stop_and_stay_padded(setup):
    free = _run(setup, temperature=0.0)
    eos = (int(free.tokens[0, 2]), int(free.tokens[1, 4]))  # two EOS ids, hit at different steps
    out = _run(
        setup, temperature=0.0, eos_ids=eos, pad_id=63, cache_buckets=3
    )  # rows stop in several buckets
    for row in range(len(PROMPTS)):
        hits = [j for j, t in enumerate(free.tokens[row]) if t in eos]
        length = hits[0] + 1 if hits else N
        assert out.lengths[row] == length
        np.testing.assert_array_equal(out.tokens[row, :length], free.tokens[row, :length])  # EOS included
        np.testing.assert_array_equal(out.mask[row], np.arange(N) < length)
        np.testing.assert_array_equal(out.tokens[row, length:], 63)
        np.testing.assert_array_equal(out.logprobs[row, length:], 0.0)
        np.testing.assert_array_equal(out.model_logprobs[row, length:], 0.0)
    assert out.lengths[0] <= 3 and out.lengths[1] <= 5


def test_stop_sequences_stop(setup):
    free = _run(setup, temperature=0.0)
    stop = tuple(int(t) for t in free.tokens[2, 3:5])  # a bigram row 2 generates at steps 3-4
    out = _run(setup, temperature=0.0, stop_sequences=[stop, (62, 62, 62)], pad_id=0)
    for row in range(len(PROMPTS)):
        t = free.tokens[row].tolist()
        ends = [j + 1 for j in range(1, N) if tuple(t[j - 1 : j + 1]) == stop]
        length = ends[0] if ends else N
        assert out.lengths[row] == length, row
        np.testing.assert_array_equal(out.tokens[row, :length], free.tokens[row, :length])
        np.testing.assert_array_equal(out.tokens[row, length:], 0)
    assert out.lengths[2] <= 5


def test_all_padding_row_generates_nothing(setup):
    model, params, batch = setup
    b = left_pad([[5, 6, 7], []], pad_id=0)
    out = generate(
        model, params, b["prompt_ids"], b["prompt_segment_ids"], None, max_new_tokens=3, temperature=0.0
    )
    np.testing.assert_array_equal(out.mask, [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(out.tokens[0], _greedy_reference(model, params, [5, 6, 7], 3))


@pytest.mark.parametrize("mesh_shape", [dict(fsdp=4, tensor=2), dict(data=2, fsdp=4)])
def test_sharded_rollout_equals_single_device(setup, mesh_shape):
    model, params, _ = setup
    batch = left_pad(PROMPTS * 2, pad_id=0)  # B = 8: divisible by data x fsdp
    kw = dict(max_new_tokens=N, temperature=1.0, top_k=16, eos_ids=(3,))
    ref = jax.device_get(
        generate(model, params, batch["prompt_ids"], batch["prompt_segment_ids"], jax.random.key(7), **kw)
    )
    mesh = sharding.make_mesh(**mesh_shape)
    shardings = sharding.logical_to_shardings(models.param_logical_axes(CFG), mesh, shapes=params)
    sharded_params = jax.device_put(params, shardings)
    gen = make_generate_fn(model, mesh=mesh, param_shardings=shardings, **kw)
    out = gen(sharded_params, batch["prompt_ids"], batch["prompt_segment_ids"], jax.random.key(7))
    assert out.tokens.sharding.spec == sharding.batch_sharding(mesh).spec
    out = jax.device_get(out)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.mask, ref.mask)
    np.testing.assert_allclose(out.model_logprobs, ref.model_logprobs, atol=1e-4)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-4)


def test_decode_is_one_while_loop_per_stage(setup):
    """The per-token loop is one XLA while per decode stage (no unrolled per-token Python loop)."""
    model, params, batch = setup
    for compact in (False, True):
        gen = make_generate_fn(model, max_new_tokens=N, temperature=0.0, compact=compact)
        hlo = gen.lower(params, batch["prompt_ids"], batch["prompt_segment_ids"], jax.random.key(0)).as_text()
        plan = stages(7, N, 4, compact=compact)
        assert hlo.count("stablehlo.while") == len(plan) == (3 if compact else 1)  # 4 -> 2 -> 1 rows


def test_stages_plan():
    assert stages(8, 64, 64) == [
        Stage(64, 72, 64, 32),
        Stage(32, 72, 64, 16),
        Stage(16, 72, 64, 8),
        Stage(8, 72, 64, 0),
    ]
    # Buckets grow the cache at full batch; compaction in the last one; sizes stay multiples of the shards.
    assert stages(8, 64, 24, cache_buckets=2, shards=4) == [
        Stage(24, 40, 32, 0),
        Stage(24, 72, 64, 12),
        Stage(12, 72, 64, 0),
    ]
    assert stages(8, 64, 8, compact=False) == [Stage(8, 72, 64, 0)]
    assert stages(8, 64, 16, cache_buckets=2, shards=4) == [
        Stage(16, 40, 32, 0),
        Stage(16, 72, 64, 8),
        Stage(8, 72, 64, 4),
        Stage(4, 72, 64, 0),
    ]


# Rows that stop at different times: a small vocabulary and several EOS ids.
SPREAD = dict(max_new_tokens=12, temperature=1.0, eos_ids=(3, 9, 17, 30))


def _prompts(n, seed=0):
    rng = np.random.default_rng(seed)
    return left_pad([list(rng.integers(4, 60, rng.integers(1, 7))) for _ in range(n)], pad_id=0)


def _gen(setup, batch, **kw):
    model, params, _ = setup
    out = generate(model, params, batch["prompt_ids"], batch["prompt_segment_ids"], jax.random.key(3), **kw)
    return jax.device_get(out)


def _same(a, b, atol=1e-5):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.model_logprobs, b.model_logprobs, atol=atol)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=atol)


def test_compaction_gives_the_same_samples(setup):
    batch = _prompts(16)
    static = _gen(setup, batch, compact=False, **SPREAD)
    assert len(set(static.lengths.tolist())) > 3 and static.lengths.min() < 6  # lengths do spread
    _same(_gen(setup, batch, compact=True, **SPREAD), static)


def test_samples_depend_on_the_sequence_id_not_the_batch(setup):
    batch = _prompts(8)
    whole = _gen(setup, batch, **SPREAD)
    half = {k: v[4:] for k, v in batch.items()}
    alone = _gen(setup, half, row_ids=np.arange(4, 8), **SPREAD)
    _same(alone, type(whole)(*(x[4:] for x in whole)))
    other = _gen(setup, half, **SPREAD)  # ids 0..3: other sequences, other draws
    assert not np.array_equal(other.tokens, alone.tokens)


def test_shared_prompt_prefill_equals_repeated_prompts(setup):
    batch = _prompts(4)
    g = 4
    repeated = {k: np.repeat(v, g, axis=0) for k, v in batch.items()}
    ref = _gen(setup, repeated, **SPREAD)
    shared = _gen(setup, batch, num_samples=g, **SPREAD)
    _same(shared, ref)
    assert shared.tokens.shape == (16, SPREAD["max_new_tokens"])
    assert len({tuple(t) for t in shared.tokens[:g].tolist()}) > 1  # a group's samples differ


def test_sharded_shared_prompts_and_compaction_equal_single_device(setup):
    model, params, _ = setup
    batch = _prompts(8, seed=1)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    shardings = sharding.logical_to_shardings(models.param_logical_axes(CFG), mesh, shapes=params)
    gen = make_generate_fn(model, mesh=mesh, param_shardings=shardings, num_samples=4, **SPREAD)
    out = jax.device_get(
        gen(
            jax.device_put(params, shardings),
            batch["prompt_ids"],
            batch["prompt_segment_ids"],
            jax.random.key(3),
        )
    )
    _same(out, _gen(setup, batch, num_samples=4, compact=False, **SPREAD), atol=1e-4)  # as the test above


EOS = 2


def test_second_turn_on_kept_cache_equals_fresh_prompt():
    model, params = models.Transformer(CFG), _init(CFG)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    n1, n2, temp = 6, 5, 1.0
    first = make_generate_fn(
        model, max_new_tokens=n1, temperature=temp, eos_ids=(EOS,), compact=False, keep_cache=True
    )
    cont = make_continue_fn(model, max_new_tokens=n2, temperature=temp, eos_ids=(EOS,))
    b = left_pad(prompts, pad_id=0)
    key = jax.random.key(3)
    out1, cache = first(params, b["prompt_ids"], b["prompt_segment_ids"], key)
    out1 = jax.device_get(out1)
    # Each row's context: prompt + turn-1 tokens; the environment appends [30, 31] (row 1: nothing: done).
    appended, starts, contexts = [], [], []
    for r, p in enumerate(prompts):
        c = [int(t) for t in out1.tokens[r][out1.mask[r] == 1]]
        env = [] if r == 1 else [30, 31 + r]
        appended.append([c[-1]] + env if env else [])
        starts.append(len(p) + len(c) - 1)
        contexts.append(p + c + env)
    a = left_pad(appended, pad_id=0, length=4)
    key2 = jax.random.key(4)
    out2, cache2 = cont(
        params, cache, np.asarray(starts, np.int32), a["prompt_ids"], a["prompt_segment_ids"], key2
    )
    out2 = jax.device_get(out2)
    assert cache2["mask"].shape[1] == len(prompts[0]) + n1 + 4 + n2  # grown by the appended + new only
    assert out2.mask[1].sum() == 0  # the done row stays padding
    # The same turn sampled from the whole context as a fresh prompt (the same row keys and step keys).
    fresh = make_generate_fn(model, max_new_tokens=n2, temperature=temp, eos_ids=(EOS,), compact=False)
    for r in (0, 2):
        f = left_pad([contexts[r]], pad_id=0)
        ref = jax.device_get(
            fresh(params, f["prompt_ids"], f["prompt_segment_ids"], key2, row_ids=np.asarray([r]))
        )
        np.testing.assert_array_equal(out2.tokens[r], ref.tokens[0])
        np.testing.assert_allclose(out2.model_logprobs[r], ref.model_logprobs[0], atol=2e-5)
