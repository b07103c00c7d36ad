"""Builds what a run needs from the config: tokenizer, model, parameters on the mesh, reference, data."""

import dataclasses
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxalign import checkpoints, data, hosts, models, registry, sharding
from jaxalign.data import batching, pipeline
from jaxalign.lora import kinds
from jaxalign.trainers import flops, reference_cache
from jaxalign.trainers.step import make_eval_step, make_loss_fn
from jaxalign.trainers.validate import check_model_fits, config_fail, validate  # noqa: F401  (validate: the loop's)
from jaxalign.trainers.objectives import averages_logps, hparams, make_reference_fn


@dataclasses.dataclass
class Run:
    """What the one loop (`trainers/loop.py`) needs of a run, offline (built here) or RL (`rl.build_run`).

    `batches` is the batch source: `next(state) -> (global device batch, {"tokens", "flops"}, metrics)`,
    plus `get_state()` / `set_state()` (checkpointed with the train state) and `close()`. `loss_fn(params,
    frozen, batch)` is what the step differentiates; `ref_params` is its `frozen` argument (the reference
    policy, the frozen base under adapters, or None). `evaluate(params) -> metrics`, or None without an
    eval set."""

    model: Any
    model_config: Any
    head: str
    params: Any  # the trainable parameters at the start (the train state holds them from then on)
    ref_params: Optional[Any]
    tokenizer: Any
    loss_fn: Callable
    batches: Any
    evaluate: Optional[Callable]
    batch_sharding: Any
    optimizer_config: Any  # config.optimizer (warm-up counted in optimiser updates)
    total_updates: int
    summary: str = ""  # what the start-up line says after the parameter count
    epochs: int = 1  # passes over each batch per step (RL), in
    num_minibatches: int = 1  # shuffled minibatches, one optimiser update each
    lora_config: Optional[Any] = None
    export_params: Callable = lambda params: params  # the trainable tree -> the model exported
    export_base: Optional[Callable] = None  # frozen -> the base the exported adapters sit on

    def adapter_base(self):
        return self.ref_params if self.export_base is None else self.export_base(self.ref_params)

    def describe(self, state=None):
        params = self.params if state is None else state.params
        n = sum(x.size for x in jax.tree.leaves(params))
        return f"{n / 1e6:.2f}M trainable parameters, {self.summary}"

    def export(self, params, path):
        export(self, self.export_params(params), path)


class DataBatches:
    """The offline batch source: the data iterator's host batches (made and tokenized in a background
    thread) as global device arrays, with their token and FLOP counts (all hosts)."""

    def __init__(self, iterator, batch_sharding, model_config, passes, lm_head, head_share=1.0):
        self.iterator, self.sharding = iterator, batch_sharding
        self.model_config, self.passes, self.lm_head = model_config, passes, lm_head
        self.head_share = head_share  # < 1: the LM head reads only the loss's positions (`with_head_index`)

    def next(self, state):
        del state  # offline batches do not depend on the policy
        batch = next(self.iterator)
        source_metrics = {}
        if self.head_share < 1:
            indexed = batching.with_head_index(batch, self.head_share)
            fits = hosts.all_hosts(indexed is not None)  # one program on every host
            batch = indexed if fits else batch
            # logged as the share of steps whose batch had a row needing more: the LM head on whole rows
            source_metrics["perf/head_whole_rows"] = 0.0 if fits else 1.0
        hosts_n = jax.process_count()
        info = {
            "tokens": count_tokens(batch) * hosts_n,
            "flops": flops.batch_flops(self.model_config, batch, self.passes, lm_head=self.lm_head) * hosts_n,
        }
        return hosts.to_global(batch, self.sharding), info, source_metrics

    def get_state(self):
        return self.iterator.get_state()

    def set_state(self, state):
        self.iterator.set_state(state)

    def close(self):
        getattr(self.iterator, "close", lambda: None)()


def count_tokens(batch):
    """Real (non-padding) tokens of a host batch: the positions whose segment id is > 0."""
    return int(sum(np.sum(v > 0) for k, v in batch.items() if k.endswith("segment_ids") and v.ndim == 2))


def make_loss_evaluator(loss_fn, frozen, eval_iter_fn, batch_sharding):
    """`evaluate(params) -> metrics`: the loss and its metrics averaged over the full batches of one pass
    of the held-out split.

    The last, partial batch (padding rows have `weight` 0) is left out: the losses average over rows, and
    padding rows would bias them. Use an eval set whose size `train.eval_batch_size` divides to see all of
    it."""
    eval_step = jax.jit(make_eval_step(loss_fn))

    def evaluate(params):
        records = []
        for batch in eval_iter_fn():
            if "weight" in batch and float(np.min(batch["weight"])) < 1.0:
                continue
            records.append(jax.device_get(eval_step(params, hosts.to_global(batch, batch_sharding), frozen)))
        out = hosts.mean_metrics(records) if records else {}
        if out:
            out["num_batches"] = float(len(records))
        return out

    return evaluate


def eval_batch_size(config, n, mesh):
    """`train.eval_batch_size`, lowered to a multiple of the batch axes' devices that a held-out set of n
    rows fills (a set smaller than the batch would otherwise never be evaluated: partial batches are left
    out). Says how many rows a pass leaves out, if any."""
    b, shards = config.train.eval_batch_size, hosts.batch_shards(mesh)
    if n < b:
        b = n // shards * shards
        if not b:
            config_fail(
                "data.eval",
                config.data.eval,
                f"has {n} rows, fewer than the {shards} devices the batch is split over; give at least {shards}",
            )
        logging.warning(
            "data.eval: %d rows, fewer than train.eval_batch_size: evaluating in batches of %d", n, b
        )
    if n % b:
        logging.warning(
            "data.eval: a pass evaluates %d of the %d rows (batches of %d; the last partial batch is left out)",
            n - n % b,
            n,
            b,
        )
    return b


def data_paths(spec):
    """`data.train` / `data.eval`: one path (or hub name), or several comma-separated files read in order."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else parts


def make_model(mcfg, head):
    return models.ScalarHeadModel(mcfg) if head == "score" else models.Transformer(mcfg)


def model_overrides(config):
    """The ModelConfig fields a run's config sets on top of the checkpoint's (numerics, remat, scan)."""
    m = config.model
    out = dict(
        dtype=m.dtype,
        param_dtype=m.param_dtype,
        remat=m.remat,
        scan_layers=m.scan_layers,
        logits_chunk=m.logits_chunk,
        router_z_loss_coef=m.get("router_z_loss_coef", 0.0),
        attention_impl=None if m.get("attention", "auto") == "auto" else m.attention,
    )
    if m.get("router_aux_loss_coef", -1.0) >= 0:  # else the checkpoint's
        out["router_aux_loss_coef"] = m.router_aux_loss_coef
    return out


def load_model(config, mesh, head):
    """(ModelConfig, params) from `model.path` (HF directory) or a random init from `model.init`."""
    m = config.model
    overrides = model_overrides(config)
    if m.path:
        mcfg, params = checkpoints.load_hf_model(m.path, mesh=mesh, head=head, **overrides)
    else:
        init = dict(m.init.to_dict())
        tok = checkpoints.load_tokenizer(m.tokenizer)
        if not init.get("vocab_size"):
            init["vocab_size"] = len(tok)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # for the export's config.json
            init.setdefault(name, getattr(tok, name))
        mcfg = dataclasses.replace(models.ModelConfig.from_hf(init), **overrides)
        module = make_model(mcfg, head)
        shardings = sharding.logical_to_shardings(models.param_logical_axes(mcfg, module), mesh)
        params = jax.jit(lambda k: models.init_params(mcfg, k, module), out_shardings=shardings)(
            jax.random.key(config.seed)
        )
    return mcfg, params


def build_run(config, mesh):
    spec = registry.get(config.objective)
    kind, needs_ref, head = spec.data, spec.reference, spec.head
    m = config.model
    d = config.data
    # Every row is read and checked first: bad data fails here (DataError), before anything loads.
    skip = dict(kind=kind, format=d.format, skip_bad_rows=d.skip_bad_rows)
    train_rows = data.read(data_paths(d.train), split="train", **skip)
    eval_rows = data.read(data_paths(d.eval), split="eval", **skip) if d.eval else None
    tokenizer = checkpoints.load_tokenizer(m.tokenizer or m.path, trust_remote_code=m.trust_remote_code)
    check_model_fits(config, tokenizer)  # vocabulary and positions, before the weights load
    d = config.data
    common = dict(
        kind=kind,
        tokenizer=tokenizer,
        format=d.format,
        max_length=d.max_length,
        max_prompt_length=d.max_prompt_length,
        assistant_only_loss=d.assistant_only_loss,
        packing=d.packing,
        whole_sequences=head == "score",
        chat_template=d.chat_template,
    )
    lazy = {"auto": None, "upfront": False, "lazy": True}[d.tokenize]
    train_ds = data.load(train_rows, split="train", lazy=lazy, **common)
    # Padding-free SFT rows split into grad_accum_steps micro-batches (the other objectives refuse it).
    rows = dict(
        row_multiple=row_multiple(mesh) * config.train.grad_accum_steps,
        pad_id=tokenizer.pad_token_id or 0,
        length_buckets=d.length_buckets,
    )
    head_share = 1.0
    if head == "lm" and m.get("head_positions", "loss") == "loss":
        head_share = loss_share(train_ds, config.train.batch_size, rows, d.shuffle_seed)
        if head_share > HEAD_SHARE_WORTH:  # the gather would cost about what it saves
            head_share = 1.0
    mcfg, params = load_model(config, mesh, head)
    model = make_model(mcfg, head)
    lora_cfg = kinds.config_of(config)  # the adapters' config: LoraConfig, BottleneckConfig or None
    if lora_cfg is not None:
        # Adapters are the trainable params; the frozen base is passed as `ref_params` (adapters off it
        # is the reference policy, so there is no second copy of the weights).
        adapters, lora_cfg, stand_in = kinds.make(
            config, model, params, mesh, jax.random.key(config.seed + 1)
        )
        params, ref_params, model = adapters, params, stand_in
    else:
        # The frozen reference: a second copy with the policy's sharding (never donated, no gradient).
        ref_params = jax.tree.map(jnp.copy, params) if needs_ref else None

    precompute = needs_ref and bool(config.get(config.objective).get("precompute_ref", False))
    if precompute:
        hp = hparams(config)
        ref_fn = make_reference_fn(model, config.objective, hp)
        cache = None
        if hp.get("ref_cache_dir"):
            cache = (
                hp["ref_cache_dir"],
                reference_cache.checkpoint_identity(m, config.seed),
                dict(
                    objective=config.objective,
                    average=averages_logps(hp),
                    dtype=m.dtype,
                    param_dtype=m.param_dtype,
                ),
            )
        precompute_reference(
            ref_fn, ref_params, train_ds, config.train.eval_batch_size, mesh, tokenizer, cache
        )
    # Batches are made (and lazily tokenized) in a background thread while the device runs the step.
    train_iter = pipeline.Prefetcher(
        pipeline.BatchIterator(
            train_ds,
            config.train.batch_size,
            seed=d.shuffle_seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            **rows,
        )
    )
    eval_iter_fn = None
    if d.eval:
        eval_ds = data.load(eval_rows, split="eval", **common)
        eval_batch = eval_batch_size(config, len(eval_ds), mesh)
        if precompute:
            precompute_reference(ref_fn, ref_params, eval_ds, eval_batch, mesh, tokenizer, cache)

        def eval_iter_fn():
            return pipeline.BatchIterator(
                eval_ds,
                eval_batch,
                seed=0,
                shuffle=False,
                repeat=False,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                **rows,
            )

    if precompute and lora_cfg is None:
        ref_params = None  # The reference's log-probs are in the data now: free its memory.
    bs = sharding.batch_sharding(mesh)
    loss_fn = make_loss_fn(model, config)
    passes = flops.step_passes(reference=needs_ref and not precompute, frozen_base=lora_cfg is not None)
    n_train = train_ds.num_examples if hasattr(train_ds, "num_examples") else len(train_ds)
    return Run(
        model=model,
        model_config=mcfg,
        head=head,
        params=params,
        ref_params=ref_params,
        tokenizer=tokenizer,
        loss_fn=loss_fn,
        batches=DataBatches(train_iter, bs, mcfg, passes, lm_head=head == "lm", head_share=head_share),
        evaluate=make_loss_evaluator(loss_fn, ref_params, eval_iter_fn, bs) if eval_iter_fn else None,
        batch_sharding=bs,
        optimizer_config=config.optimizer,
        total_updates=config.train.num_steps,
        summary=f"{n_train} training examples",
        lora_config=lora_cfg,
    )


HEAD_SAMPLE_BATCHES = 16
HEAD_SHARE_WORTH = 0.9  # above this share of a row, the LM head runs on whole rows


def loss_share(dataset, batch_size, rows, seed, batches=HEAD_SAMPLE_BATCHES):
    """The largest share of a row's positions that the loss reads (its mask), over the first `batches`
    training batches of the global batch order (every host computes the same value): how many positions
    per row the LM head projects (`DataBatches`). A later batch with a row that needs more runs the
    whole-row head (the same values, a second compiled program)."""
    it = pipeline.BatchIterator(dataset, batch_size, seed=seed, **rows)
    share = 0.0
    for _ in range(min(batches, max(it.steps_per_epoch, 1))):
        batch = it.next()
        for key, mask in batch.items():
            if key.endswith("loss_mask") and mask.ndim == 2 and mask.shape[1]:
                share = max(share, float(np.max(np.sum(mask != 0, axis=1))) / mask.shape[1])
    return min(max(share, 1e-3), 1.0)


row_multiple = hosts.row_multiple  # batch shards per host


def precompute_reference(ref_fn, ref_params, dataset, batch_size, mesh, tokenizer=None, cache=None):
    """One in-order pass of the frozen reference over `dataset`; adds its log-probs as per-example arrays.

    Each host feeds its slice of every global batch; the outputs are gathered so that every host holds the
    values for all N examples (the data iterator later slices them like any other column). `cache`:
    (directory, reference identity, settings) to read the values from, or write them to, on disk
    (`reference_cache`); None computes them every time.
    """
    from jax.experimental import multihost_utils

    n = dataset.num_examples
    if cache is not None:
        cache_dir, identity, settings = cache
        key = reference_cache.fingerprint(dataset, identity, settings)
        found = reference_cache.load(cache_dir, key, n)
        everywhere = found is not None
        if jax.process_count() > 1:  # use it only if every host has it: the pass below is collective
            everywhere = bool(np.min(multihost_utils.process_allgather(np.int32(found is not None))))
        if everywhere:
            dataset.arrays.update(found)
            print(
                f"Reference log-probs for {n} examples from {reference_cache.path_of(cache_dir, key)}",
                flush=True,
            )
            return
    bs = sharding.batch_sharding(mesh)
    fn = jax.jit(ref_fn, in_shardings=(jax.tree.map(lambda x: x.sharding, ref_params), bs))
    it = pipeline.BatchIterator(
        dataset,
        batch_size,
        seed=0,
        shuffle=False,
        repeat=False,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        row_multiple=row_multiple(mesh),
        pad_id=getattr(tokenizer, "pad_token_id", None) or 0,
    )
    chunks = []
    for batch in it:
        arrays = hosts.to_global(batch, bs)
        chunks.append(multihost_utils.process_allgather(fn(ref_params, arrays), tiled=True))
    computed = {
        k: np.concatenate([np.asarray(c[k]) for c in chunks])[:n].astype(np.float32) for k in chunks[0]
    }
    dataset.arrays.update(computed)
    where = ""
    if cache is not None and jax.process_index() == 0:
        where = f", cached in {reference_cache.save(cache_dir, key, computed)}"
    print(f"Precomputed reference log-probs for {n} examples{where}", flush=True)


def export(run, params, path):
    """HF export of the trained model; with LoRA the adapters merged into the base, plus the adapters
    alone in PEFT format under `<path>/adapter` (adapter_config.json + adapter_model.safetensors; task
    SEQ_CLS with the score head as a module to save for head="score").
    Bottleneck adapters cannot be merged (nonlinear): the base as it is, plus the adapters in their own
    file under `<path>/bottleneck_adapter` (jaxalign.lora.save_bottleneck_adapter)."""
    if getattr(run.lora_config, "kind", None) == "bottleneck":
        from jaxalign import lora

        checkpoints.save_hf_model(
            path, run.model_config, run.adapter_base(), tokenizer=run.tokenizer, head=run.head
        )
        lora.save_bottleneck_adapter(
            os.path.join(path, "bottleneck_adapter"), params, run.lora_config, run.model_config
        )
        print(
            f"Bottleneck adapters are nonlinear and cannot be merged: exported the unchanged base to {path} "
            f"and the adapters to {os.path.join(path, 'bottleneck_adapter')}",
            flush=True,
        )
        return
    if run.lora_config is not None:
        from jaxalign import lora

        base = run.adapter_base()
        checkpoints.save_hf_model(
            path,
            run.model_config,
            lora.merge_lora(base, params, run.lora_config),
            tokenizer=run.tokenizer,
            head=run.head,
        )
        # PEFT's CAUSAL_LM adapter, or for a reward model / critic SEQ_CLS with the score head in full.
        lora.save_peft_adapter(os.path.join(path, "adapter"), params, run.lora_config, run.model_config)
        return
    checkpoints.save_hf_model(path, run.model_config, params, tokenizer=run.tokenizer, head=run.head)
