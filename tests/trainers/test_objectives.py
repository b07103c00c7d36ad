"""Objective glue: preference objectives equal their losses applied to separately computed log-probs."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import losses, models
from jaxalign.trainers import objectives


CFG = models.ModelConfig(
    vocab_size=32,
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    intermediate_size=32,
)
# Compiled once for every test (op by op, `module.init` dispatches each primitive: seconds on a busy CPU).
_init = jax.jit(lambda k: models.init_params(CFG, k))


def _setup(seed=0, b=3, t=7):
    model = models.Transformer(CFG)
    params, ref = _init(jax.random.key(seed)), _init(jax.random.key(seed + 1))
    rng = np.random.default_rng(seed)
    batch = {}
    for side in ("chosen", "rejected"):
        lengths = rng.integers(3, t + 1, b)
        seg = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
        batch[f"{side}_input_ids"] = rng.integers(0, 32, (b, t)).astype(np.int32) * seg
        batch[f"{side}_targets"] = rng.integers(0, 32, (b, t)).astype(np.int32) * seg
        batch[f"{side}_loss_mask"] = (seg * (np.arange(t)[None] >= 2)).astype(np.float32)
        batch[f"{side}_positions"] = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
        batch[f"{side}_segment_ids"] = seg
    return model, params, ref, batch


def _logps(model, params, batch, side):
    logits = model.apply(
        {"params": params},
        batch[f"{side}_input_ids"],
        batch[f"{side}_positions"],
        batch[f"{side}_segment_ids"],
    )
    return losses.sequence_logprobs(logits, batch[f"{side}_targets"], batch[f"{side}_loss_mask"])


def test_dpo_objective_with_rpo_term_equals_dpo_plus_chosen_nll():
    model, params, ref, batch = _setup()
    hp = dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0, rpo_alpha=0.5)
    loss, metrics = jax.jit(objectives.make_dpo_loss(model, hp))(params, ref, batch)

    @jax.jit  # the separate computation, compiled once (op by op it dispatches every primitive)
    def expected(params, ref, batch):
        pc, pr = _logps(model, params, batch, "chosen"), _logps(model, params, batch, "rejected")
        rc, rr = _logps(model, ref, batch, "chosen"), _logps(model, ref, batch, "rejected")
        dpo, _ = losses.dpo_loss(pc, pr, rc, rr, beta=0.1)
        logits = model.apply(
            {"params": params},
            batch["chosen_input_ids"],
            batch["chosen_positions"],
            batch["chosen_segment_ids"],
        )
        nll, _ = losses.sft_loss(logits, batch["chosen_targets"], batch["chosen_loss_mask"])
        return dpo, nll

    dpo, nll = expected(params, ref, batch)
    np.testing.assert_allclose(loss, dpo + 0.5 * nll, rtol=1e-5)
    np.testing.assert_allclose(metrics["nll_chosen"], nll, rtol=1e-5)


def test_simpo_objective_with_cpo_term_equals_simpo_plus_chosen_nll():
    model, params, _, batch = _setup(seed=3)
    hp = dict(beta=2.0, gamma=1.0, cpo_alpha=0.7)
    loss, metrics = jax.jit(objectives.make_simpo_loss(model, hp))(params, None, batch)

    @jax.jit
    def expected(params, batch):
        def avg(side):
            total = _logps(model, params, batch, side)
            return total / jnp.sum(batch[f"{side}_loss_mask"], axis=1)

        simpo, _ = losses.simpo_loss(avg("chosen"), avg("rejected"), beta=2.0, gamma=1.0)
        logits = model.apply(
            {"params": params},
            batch["chosen_input_ids"],
            batch["chosen_positions"],
            batch["chosen_segment_ids"],
        )
        nll, _ = losses.sft_loss(logits, batch["chosen_targets"], batch["chosen_loss_mask"])
        return simpo, nll

    simpo, nll = expected(params, batch)
    np.testing.assert_allclose(loss, simpo + 0.7 * nll, rtol=1e-5)
    np.testing.assert_allclose(metrics["nll_chosen"], nll, rtol=1e-5)


def test_reward_objective_reads_the_score_at_the_last_token_including_eos():
    model, params, _, batch = _setup()
    both = objectives._pair(batch)
    ids, pos, seg = objectives.full_sequences(both)
    # The full sequence is the inputs followed by the last target: its last real token is the final target.
    last = np.asarray(seg).shape[1] - 1 - np.argmax(np.asarray(seg)[:, ::-1] != 0, axis=1)
    lengths = np.asarray(both["segment_ids"]).sum(1)
    np.testing.assert_array_equal(last, lengths)
    np.testing.assert_array_equal(
        np.asarray(ids)[np.arange(len(last)), last],
        np.asarray(both["targets"])[np.arange(len(last)), lengths - 1],
    )


def test_displacement_warning_once():
    """The loop warns once when the chosen log-probs fall more than DISPLACEMENT_NATS per token below the
    reference's while the margins are positive, and not when the margins are not."""
    import ml_collections

    from jaxalign.trainers import loop

    config = ml_collections.ConfigDict({"objective": "dpo"})
    calm = {"train/logps/chosen_shift_per_token": -0.1, "train/rewards/margins": 2.0}
    falling_margin = {"train/logps/chosen_shift_per_token": -0.9, "train/rewards/margins": -1.0}
    displaced = {"train/logps/chosen_shift_per_token": -0.9, "train/rewards/margins": 2.0}
    assert not loop.displacement_warning(calm, config, False)
    assert not loop.displacement_warning(falling_margin, config, False)
    assert not loop.displacement_warning({}, config, False)  # objectives without these metrics
    assert loop.displacement_warning(displaced, config, False)
    assert loop.displacement_warning(displaced, config, True)
