"""Objective glue: from (params, batch) to a loss from `jaxalign.losses`. No maths of its own.

Each objective is a builder `make_<name>_loss(model, hparams) -> loss_fn(params, ref_params, batch)`
returning `(loss, metrics)`. `hparams` is a plain dict read from the config outside of any trace.
Which builder an objective uses, its data, head and reference are in `jaxalign/registry.py`.

Preference objectives run chosen and rejected through one forward pass: the two halves are concatenated
along the batch axis ([2B, T]) and split after the log-probs are taken. A padding-free batch (it has
``sequence_ids``, see `jaxalign.data.pipeline`) is already one set of rows holding every sequence; its
log-probs are summed per sequence slot (chosen of pair j = 2j, rejected = 2j + 1).
"""

import contextvars

import jax
import jax.numpy as jnp

from jaxalign import losses, registry
from jaxalign.models import last_token_scores
from jaxalign.models.attention import softcap

_SEQ_KEYS = ("input_ids", "targets", "loss_mask", "positions", "segment_ids")


# Router statistics of mixture-of-experts forwards, collected while `with_router_metrics` traces a loss.
_ROUTER = contextvars.ContextVar("router_stats", default=None)
PER_EXPERT_LOGGED = 16  # experts up to which each one's load is its own metric (router/load/<e>)


def _apply(model, params, batch, **kwargs):
    """`model.apply` on a batch's rows; inside `with_router_metrics`, a mixture of experts' router
    statistics (sown by `layers.MoE`) are collected too."""
    args = ({"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"])
    box = _ROUTER.get()
    if box is None:
        return model.apply(*args, **kwargs)
    out, state = model.apply(*args, mutable=["intermediates"], **kwargs)
    box.append(router_summary(state["intermediates"]))
    return out


def router_summary(intermediates):
    """Router metrics from a forward's sown ("intermediates", "router") values, averaged over layers:
    `router/balance`, `router/z`, the busiest and idlest expert's share of the assignments
    (`router/load_max`, `router/load_min`; 1/E each when balanced) and, for up to PER_EXPERT_LOGGED
    experts, each one's share (`router/load/<e>`)."""
    found = []

    def visit(tree):
        if isinstance(tree, dict):
            for k, v in tree.items():
                if k == "router":
                    found.extend(v)  # a tuple of sown dicts (a stacked [L, ...] one under nn.scan)
                else:
                    visit(v)

    visit(intermediates)
    if not found:
        return {}
    load = jnp.concatenate([f["router/load"].reshape(-1, f["router/load"].shape[-1]) for f in found])
    load = jnp.mean(load, axis=0)  # [E], over layers
    per_layer = lambda key: jnp.mean(jnp.concatenate([f[key].reshape(-1) for f in found]))  # noqa: E731
    out = {
        "router/balance": per_layer("router/balance"),
        "router/z": per_layer("router/z"),
        "router/load_max": jnp.max(load),
        "router/load_min": jnp.min(load),
    }
    if load.shape[0] <= PER_EXPERT_LOGGED:
        out.update({f"router/load/{e}": load[e] for e in range(load.shape[0])})
    return out


def with_router_metrics(loss_fn):
    """`loss_fn` whose metrics also hold the router statistics of its first forward (the policy's; a
    reference pass comes after it): see `router_summary`."""

    def wrapped(params, frozen, batch):
        box = []
        token = _ROUTER.set(box)
        try:
            loss, metrics = loss_fn(params, frozen, batch)
        finally:
            _ROUTER.reset(token)
        return loss, ({**metrics, **box[0]} if box else metrics)

    return wrapped


def _logits(model, params, batch):
    return _apply(model, params, batch)


CHUNK_VOCAB = 32768  # logits_chunk=0 (auto): vocabularies this large never hold the whole [B, T, V] logits


def _head_matrix(cfg, params):
    """The LM head as a plain [D, V] matrix, or None where it is not one (an adapted lm_head, say)."""
    if cfg.tie_word_embeddings:
        embed = params.get("embed", {})
        return embed["embedding"].T if set(embed) == {"embedding"} else None
    head = params.get("lm_head", {})
    return head["kernel"] if set(head) == {"kernel"} else None


def _token_stats(model, params, batch):
    """`losses.TokenStats` [B, T] of a batch's rows, valid where `batch["loss_mask"]` is set.

    From the whole logits, or from the hidden states: a chunk of positions at a time (`logits_chunk`, see
    `ModelConfig`), never holding [B, T, V]; and, when the batch has a `head_index` [B, K] (the loss
    mask's positions of each row, `jaxalign.data.batching.head_index`), only at those K positions: the
    other positions' stats are 0 (prompts and padding skip the vocabulary projection, as TRL's)."""
    cfg = model.config
    r, t = batch["targets"].shape
    index = batch.get("head_index")
    width = t if index is None else index.shape[1]
    chunk = cfg.logits_chunk
    if chunk == 0:
        chunk = -1 if cfg.vocab_size < CHUNK_VOCAB else losses.auto_chunk(r, width, cfg.vocab_size)
    head = _head_matrix(cfg, params) if chunk > 0 or index is not None else None
    if head is None:
        return losses.token_stats(_logits(model, params, batch), batch["targets"])
    hidden = _apply(model, params, batch, hidden_only=True)  # [B, T, D]
    targets = batch["targets"]
    if index is not None:
        at = jnp.minimum(index, t - 1)  # unused slots (index T) read the last position; dropped below
        hidden = jnp.take_along_axis(hidden, at[..., None], axis=1)  # [B, K, D]
        targets = jnp.take_along_axis(targets, at, axis=1)  # [B, K]
    if chunk > 0:
        stats = losses.chunked_token_stats(
            hidden, head, targets, min(chunk, width), dtype=cfg.dtype, softcap=cfg.final_logit_softcap
        )
    else:
        logits = jnp.dot(hidden.astype(cfg.dtype), head.astype(cfg.dtype), preferred_element_type=jnp.float32)
        stats = losses.token_stats(softcap(logits, cfg.final_logit_softcap), targets)
    if index is None:
        return stats
    return losses.TokenStats(*(losses.scatter_positions(x, index, t) for x in stats))


def _pair(batch):
    """Chosen rows then rejected rows: {key: [2B, T]} (and their `head_index` [2B, K], if any)."""
    keys = _SEQ_KEYS + (("head_index",) if "chosen_head_index" in batch else ())
    return {k: jnp.concatenate([batch["chosen_" + k], batch["rejected_" + k]], axis=0) for k in keys}


def _sequence_logps(model, params, batch, average, per_example=1):
    """[B, per_example] sequence log-probs of a padding-free batch (one forward pass over its rows)."""
    n = batch["example_mask"].shape[0] * per_example
    lp = _token_stats(model, params, batch).logprobs  # [R, T]
    logps = losses.packed_sequence_sums(lp, batch["loss_mask"], batch["sequence_ids"], n, average=average)
    return logps.reshape(-1, per_example)


def _pair_logps(model, params, batch, average):
    """Sequence log-probs of chosen and rejected completions, one forward pass. Returns ([B], [B])."""
    if "sequence_ids" in batch:
        logps = _sequence_logps(model, params, batch, average, per_example=2)
        return logps[:, 0], logps[:, 1]
    both = _pair(batch)
    lp = _token_stats(model, params, both).logprobs  # [2B, T]
    logps = losses.sequence_sums(lp, both["loss_mask"], average=average)
    b = logps.shape[0] // 2
    return logps[:b], logps[b:]


def _chosen_token_counts(batch):
    """[B] completion tokens of each chosen sequence."""
    if "sequence_ids" in batch:
        n = 2 * batch["example_mask"].shape[0]
        counts = jax.ops.segment_sum(
            batch["loss_mask"].reshape(-1).astype(jnp.float32),
            batch["sequence_ids"].reshape(-1),
            num_segments=n,
        )
        return counts.reshape(-1, 2)[:, 0]
    return jnp.sum(batch["chosen_loss_mask"], axis=-1)


def make_clm_loss(model, hp):
    def loss_fn(params, ref_params, batch):
        del ref_params
        return losses.nll_loss(
            _token_stats(model, params, batch), batch["loss_mask"], z_loss=hp.get("z_loss", 0.0)
        )

    return loss_fn


def make_sft_loss(model, hp):
    del hp

    def loss_fn(params, ref_params, batch):
        del ref_params
        loss, metrics = losses.nll_loss(_token_stats(model, params, batch), batch["loss_mask"])
        del metrics["z_loss"]  # as losses.sft_loss
        return loss, metrics

    return loss_fn


def full_sequences(batch):
    """The whole token sequences [B, T+1] back from the shifted (input_ids, targets) of right-padded,
    unpacked rows: tokens = input_ids[:, :1] ++ targets, so the last token (EOS) is included."""
    ids = jnp.concatenate([batch["input_ids"][:, :1], batch["targets"]], axis=1)
    seg = jnp.concatenate([batch["segment_ids"][:, :1], batch["segment_ids"]], axis=1)
    pos = jnp.concatenate([batch["positions"][:, :1], batch["positions"] + 1], axis=1)
    return ids, pos, jnp.where(seg != 0, seg, 0)


def make_reward_loss(model, hp):
    """Bradley-Terry reward model: the scalar head read at each sequence's last real token, which is the
    EOS of the completion (as transformers' *ForSequenceClassification and TRL's RewardTrainer read it)."""

    def loss_fn(params, ref_params, batch):
        del ref_params
        if "sequence_last" in batch:  # padding-free rows of whole sequences: read each one's last token
            scores = model.apply(
                {"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"]
            )
            pair = scores.reshape(-1)[batch["sequence_last"]].reshape(-1, 2)  # [B, 2]
            chosen, rejected = pair[:, 0], pair[:, 1]
        else:
            both = _pair(batch)
            ids, pos, seg = full_sequences(both)
            scores = model.apply({"params": params}, ids, pos, seg)
            rewards = last_token_scores(scores, seg)  # [2B]
            b = rewards.shape[0] // 2
            chosen, rejected = rewards[:b], rewards[b:]
        return losses.reward_bt_loss(chosen, rejected, center_coef=hp.get("center_coef", 0.0))

    return loss_fn


def _reference_logps(model, ref_params, batch, average):
    """Reference log-probs: precomputed in the batch, or a forward pass of the frozen reference."""
    if "ref_chosen_logps" in batch:
        return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    ref_c, ref_r = _pair_logps(model, jax.lax.stop_gradient(ref_params), batch, average)
    return ref_c, ref_r


def make_dpo_loss(model, hp):
    average = averages_logps(hp)

    def loss_fn(params, ref_params, batch):
        pol_c, pol_r = _pair_logps(model, params, batch, average)
        ref_c, ref_r = _reference_logps(model, ref_params, batch, average)
        loss, metrics = losses.dpo_loss(
            pol_c,
            pol_r,
            ref_c,
            ref_r,
            beta=hp["beta"],
            loss_type=hp["loss_type"],
            label_smoothing=hp.get("label_smoothing", 0.0),
            dpop_lambda=hp.get("dpop_lambda", 0.0),
        )
        n_chosen = jnp.maximum(_chosen_token_counts(batch).astype(jnp.float32), 1.0)
        shift = (pol_c - ref_c) if average else (pol_c - ref_c) / n_chosen  # IPO's are already means
        metrics = {**metrics, "logps/chosen_shift_per_token": jax.lax.stop_gradient(jnp.mean(shift))}
        alpha = hp.get("rpo_alpha", 0.0)
        if alpha:
            # RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"; TRL's rpo_alpha):
            # + alpha * token-mean NLL of the chosen completions.
            nll = _chosen_nll(pol_c, batch, average)
            loss = loss + alpha * nll
            metrics = {**metrics, "nll_chosen": nll}
        return loss, metrics

    return loss_fn


def _chosen_nll(chosen_logps, batch, average):
    """Token-mean NLL of the chosen completions over the batch, from their sequence log-probs."""
    return losses.token_mean_nll(chosen_logps, _chosen_token_counts(batch), average)


def make_orpo_loss(model, hp):
    def loss_fn(params, ref_params, batch):
        del ref_params
        pol_c, pol_r = _pair_logps(model, params, batch, average=True)
        # The SFT term: token-mean NLL of the chosen completions over the batch.
        return losses.orpo_loss(pol_c, pol_r, _chosen_nll(pol_c, batch, average=True), beta=hp["beta"])

    return loss_fn


def make_simpo_loss(model, hp):
    def loss_fn(params, ref_params, batch):
        del ref_params
        pol_c, pol_r = _pair_logps(model, params, batch, average=True)
        loss, metrics = losses.simpo_loss(pol_c, pol_r, beta=hp["beta"], gamma=hp["gamma"])
        alpha = hp.get("cpo_alpha", 0.0)
        if alpha:
            # CPO-SimPO (TRL's CPOTrainer, loss_type="simpo", cpo_alpha): + alpha * token-mean NLL of the
            # chosen completions, which keeps the reference-free loss from drifting off the chosen answers.
            nll = _chosen_nll(pol_c, batch, average=True)
            loss = loss + alpha * nll
            metrics = {**metrics, "nll_chosen": nll}
        return loss, metrics

    return loss_fn


def _kto_logps(model, params, batch):
    """[B] sequence log-probs of KTO completions (padded or padding-free rows)."""
    if "sequence_ids" in batch:
        return _sequence_logps(model, params, batch, average=False)[:, 0]
    return losses.sequence_sums(_token_stats(model, params, batch).logprobs, batch["loss_mask"])


def make_kto_loss(model, hp):
    """KTO. The reference point z0 is the batch's mean policy/reference log-ratio (detached, clamped >= 0)."""

    def loss_fn(params, ref_params, batch):
        pol = _kto_logps(model, params, batch)
        if "ref_logps" in batch:
            ref = batch["ref_logps"]
        else:
            ref = _kto_logps(model, jax.lax.stop_gradient(ref_params), batch)
        return losses.kto_loss(
            pol,
            ref,
            batch["label"],
            losses.kto_reference_point(pol, ref),
            beta=hp["beta"],
            desirable_weight=hp["desirable_weight"],
            undesirable_weight=hp["undesirable_weight"],
        )

    return loss_fn


def hparams(config):
    """The objective's hyper-parameters as a plain dict (read outside any trace)."""
    sub = config.get(config.objective)
    return dict(sub.to_dict()) if sub is not None else {}


def averages_logps(hp):
    """Whether the loss reads length-averaged sequence log-probs: IPO (as in TRL); every other DPO type,
    and KTO, reads summed ones."""
    return hp.get("loss_type") == "ipo"


def make_dpo_reference(model, hp):
    def fn(ref_params, batch):
        c, r = _pair_logps(model, ref_params, batch, averages_logps(hp))
        return {"ref_chosen_logps": c, "ref_rejected_logps": r}

    return fn


def make_kto_reference(model, hp):
    del hp

    def fn(ref_params, batch):
        return {"ref_logps": _kto_logps(model, ref_params, batch)}

    return fn


def make_reference_fn(model, objective, hp):
    """For `precompute_ref`: `fn(ref_params, batch) -> {key: [B]}`, the reference log-probs that the loss
    reads from the batch instead of running the reference model (`ref_chosen_logps`, ... or `ref_logps`);
    the builder is the objective's `registry.Objective.reference_fn`."""
    name = registry.get(objective).reference_fn
    if not name:
        raise ValueError(f"objective {objective!r} has no reference model to precompute")
    return globals()[name](model, hp)
