"""Evaluate a checkpoint on held-out prompt sets and text; write eval.json, eval.md and plots.

  python -m jaxalign.main --config=configs/eval.py --config.eval.checkpoint=runs/dpo/hf --workdir=/tmp/ev

or from Python (a pipeline script):

  results = evaluate_checkpoint("runs/dpo/hf", ["prompts_test.jsonl", "decline_test.jsonl"],
                                reference="runs/sft/hf", reward_model="runs/reward/hf", workdir="/tmp/ev")
  print(compare({"sft": sft_results, "dpo": results}))

Flow, per prompt set, per global batch of prompts (one jitted sampler call per model):
  policy answers (greedy by default) ─▶ decoded text ─▶ check_fn / is_refusal / speaks_as_user
        ├─▶ log π and log π_ref of the policy's tokens (teacher-forced, one forward each) ─▶ KL
        └─▶ reward model at the last token of prompt + answer; the reference's own answers scored the
            same way ─▶ reward, win rate
and once: token-mean NLL of the held-out text (`build_dataset(kind="clm")`) ─▶ perplexity.
With `classifier` (any single-logit `*ForSequenceClassification` directory, its own tokenizer) the
policy's decoded answers are scored again ─▶ classifier/mean, classifier/sigmoid_mean per set
(`eval.classifier`). With `multiple_choice` (MMLU or TruthfulQA-MC files) every (context, choice) pair is
scored by log-likelihood in batched forwards, as lm-evaluation-harness does ─▶ mc/acc, mc/acc_norm or
truthfulqa/mc1, mc1_norm, mc2, as one more column of the sets table (`eval.multiple_choice`; see
`multiple_choice`). With `judge` (any HF chat model, its own tokenizer and chat template) the policy's
and the reference's decoded answers are compared pairwise in both orders from the judge's next-token
probabilities of "1" and "2" ─▶ judge/win_rate, judge/win_rate_hard, judge/position_consistency,
judge/first_position_bias next to the reward-model win rate (`eval.judge`; see `judge`).

Outputs in `workdir`: eval.json (the dict `evaluate_checkpoint` returns), eval.md (tables, plots,
example completions), completions.jsonl (one record per prompt), eval_*.png (with matplotlib), and with
multiple-choice sets multiple_choice.jsonl (one record per question: per-choice log-likelihoods).
Every host runs the same program; each feeds its slice of a global batch and results are gathered, so
every host computes the same numbers and process 0 writes the files.
"""

from __future__ import annotations

import json
import os
import time
import types
from typing import Callable, Sequence

import jax
import numpy as np

from jaxalign import checkpoints, hosts, models, sampling, sharding
from jaxalign.data import pipeline, sources
from jaxalign.eval import classifier as clf_lib
from jaxalign.eval import judge as judge_lib
from jaxalign.eval import metrics, report
from jaxalign.eval import multiple_choice as mc
from jaxalign.eval.multiple_choice import make_loglikelihood_fn as make_mc_fn
from jaxalign.eval.scoring import make_completion_logprobs_fn, make_nll_fn, make_reward_fn
from jaxalign.errors import ConfigError, check_path as _check_path, config_fail as _fail
from jaxalign.plugins import resolve_fn

DEFAULT_CHECK_FN = "jaxalign.data.embedded:check_answer"
DEFAULT_REFUSAL_FN = "jaxalign.data.embedded:is_refusal"
DEFAULT_USER_TURN_FN = "jaxalign.data.embedded:speaks_as_user"

# The metrics of every prompt set, in report order; a metric that does not apply (no reference, no
# reward model, no labels) is None.
SET_METRICS = (
    "num_prompts",
    "accuracy",
    "stop_rate",
    "truncation_rate",
    "speaks_as_user_rate",
    "length/mean",
    "distinct/1",
    "distinct/2",
    "kl/sequence",
    "kl/per_token",
    "reward/mean",
    "reward/reference_mean",
    "win_rate",
    "refusal/rate",
    "refusal/complete_rate",
    "refusal/over_rate",
    "text/fragment_rate",
)
PROMPT_KEYS = ("prompt_ids", "prompt_segment_ids")


def _split_paths(paths: str | Sequence[str]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        paths = str(paths).split(",")
    return [str(p).strip() for p in paths if str(p).strip()]


def _set_names(paths: Sequence[str]) -> list[str]:
    """File stems as set names ("prompts_test"), made unique with a suffix where two collide."""
    names = []
    for p in paths:
        base = os.path.splitext(os.path.basename(os.path.normpath(p)))[0] or "prompts"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


# ----------------------------------------------------------------------------------------------------
# Config (objective "eval"): validated once, before anything is loaded.
# ----------------------------------------------------------------------------------------------------
def validate_config(config, num_devices: int, process_count: int = 1) -> tuple[int, int, int]:
    """Raises ConfigError on the first bad `eval.*` / `mesh.*` field. Returns the mesh shape
    (data, fsdp, tensor), as `trainers.validate.validate` does for training objectives."""
    if config.objective != "eval":
        _fail("objective", config.objective, "this runner evaluates; expected 'eval'")
    e = config.eval
    _check_path("eval.checkpoint", e.checkpoint)
    _check_path("eval.tokenizer", e.tokenizer, required=False)
    _check_path("eval.reference", e.reference, required=False)
    _check_path("eval.reward_model", e.reward_model, required=False)
    for field in ("checkpoint", "reference", "reward_model"):  # CheckpointError before anything is loaded
        if e[field] and os.path.isdir(os.path.expanduser(e[field])):
            checkpoints.hf.check_hf_dir(os.path.expanduser(e[field]))
    if e.reward_model and checkpoints.hf.is_reward_checkpoint(e.reward_model) is False:
        _fail(
            "eval.reward_model",
            e.reward_model,
            "is a causal-LM checkpoint (config.json architectures), not "
            "a reward model (*ForSequenceClassification); its score head would be random",
        )
    if e.classifier:
        _check_path("eval.classifier", e.classifier)
        clf_lib.check_classifier(e.classifier)  # CheckpointError naming its config.json
    if e.judge:
        _check_path("eval.judge", e.judge)
        if not e.reference:
            _fail("eval.judge", e.judge, "needs eval.reference (the answers it compares the policy's with)")
        judge_lib.check_judge(e.judge)  # CheckpointError naming the directory
    judge_lib.check_template(e.judge_template)
    if e.classifier_input not in clf_lib.MODES:
        _fail("eval.classifier_input", e.classifier_input, f"expected one of {', '.join(clf_lib.MODES)}")
    mc_files = _split_paths(e.multiple_choice)
    for p in mc_files:
        _check_path("eval.multiple_choice", p)
    if e.mc_schema not in mc.SCHEMAS:
        _fail("eval.mc_schema", e.mc_schema, f"expected one of {', '.join(mc.SCHEMAS)}")
    if e.mc_max_questions < 0:
        _fail("eval.mc_max_questions", e.mc_max_questions, "must be >= 0 (0 = every question)")
    prompts = _split_paths(e.prompts)
    if not prompts and e.classifier:
        _fail("eval.prompts", e.prompts, "is required with eval.classifier (it scores the answers to them)")
    if not prompts and e.judge:
        _fail("eval.prompts", e.prompts, "is required with eval.judge (it judges the answers to them)")
    if not prompts and not mc_files:
        _fail(
            "eval.prompts",
            e.prompts,
            "is required (comma-separated prompt files) unless eval.multiple_choice is set",
        )
    for p in prompts:
        _check_path("eval.prompts", p)
    _check_path("eval.text_path", e.text_path, required=False)
    for field in ("check_fn", "refusal_fn", "user_turn_fn"):
        try:
            resolve_fn(e[field])
        except (ValueError, ImportError) as err:
            _fail(f"eval.{field}", e[field], str(err))
    if e.max_new_tokens < 1:
        _fail("eval.max_new_tokens", e.max_new_tokens, "must be >= 1")
    if e.max_prompt_length < 1:
        _fail("eval.max_prompt_length", e.max_prompt_length, "must be >= 1")
    if e.text_max_length < 2:
        _fail("eval.text_max_length", e.text_max_length, "must be >= 2")
    if e.max_prompts < 0:
        _fail("eval.max_prompts", e.max_prompts, "must be >= 0 (0 = every prompt)")
    if e.temperature < 0:
        _fail("eval.temperature", e.temperature, "must be >= 0 (0 = greedy)")
    if e.top_k < 0:
        _fail("eval.top_k", e.top_k, "must be >= 0 (0 = off)")
    if not 0 < e.top_p <= 1:
        _fail("eval.top_p", e.top_p, "must be in (0, 1]")
    if e.dtype not in ("float32", "bfloat16"):
        _fail("eval.dtype", e.dtype, "expected float32 or bfloat16")
    if e.num_examples < 0:
        _fail("eval.num_examples", e.num_examples, "must be >= 0")

    m = config.mesh
    try:
        mesh_shape = _mesh_shape(m.data, m.fsdp, m.tensor, num_devices)
    except ValueError as err:
        _fail("mesh", f"data={m.data} fsdp={m.fsdp} tensor={m.tensor}", str(err))
    shards = hosts.batch_shards(mesh_shape)
    if e.batch_size < 1 or e.batch_size % shards:
        _fail("eval.batch_size", e.batch_size, f"must be a positive multiple of data × fsdp = {shards}")
    if e.batch_size % process_count:
        _fail("eval.batch_size", e.batch_size, f"must divide by the {process_count} processes")
    return mesh_shape


def _mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    sizes = [data, fsdp, tensor]
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError("axis sizes must be positive, with at most one -1 (= the remaining devices)")
    known = int(np.prod([s for s in sizes if s != -1]))
    if num_devices % known:
        raise ValueError(f"does not divide the {num_devices} devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"uses {int(np.prod(sizes))} devices but there are {num_devices}")
    return tuple(sizes)


def evaluate_and_report(config, workdir: str, devices=None) -> dict:
    """The `objective="eval"` runner of `jaxalign.main`: validate, evaluate, write the report."""
    hosts.maybe_initialize(config.distributed)
    devices = jax.devices() if devices is None else devices
    mesh = sharding.make_mesh(*validate_config(config, len(devices), jax.process_count()), devices=devices)
    e = config.eval
    results = evaluate_checkpoint(
        e.checkpoint,
        e.prompts,
        reference=e.reference or None,
        reward_model=e.reward_model or None,
        text_path=e.text_path or None,
        tokenizer=e.tokenizer or None,
        check_fn=e.check_fn,
        refusal_fn=e.refusal_fn,
        user_turn_fn=e.user_turn_fn,
        max_new_tokens=e.max_new_tokens,
        temperature=e.temperature,
        top_k=e.top_k,
        top_p=e.top_p,
        max_prompt_length=e.max_prompt_length,
        max_prompts=e.max_prompts,
        batch_size=e.batch_size,
        text_max_length=e.text_max_length,
        seed=config.seed,
        dtype=e.dtype,
        mesh=mesh,
        workdir=workdir,
        plots=e.plots,
        num_examples=e.num_examples,
        classifier=e.classifier or None,
        classifier_input=e.classifier_input,
        multiple_choice=e.multiple_choice or None,
        mc_schema=e.mc_schema,
        mc_chat=e.mc_chat,
        mc_truthfulqa_preamble=e.mc_truthfulqa_preamble,
        mc_max_questions=e.mc_max_questions,
        judge=e.judge or None,
        judge_template=e.judge_template,
    )
    if jax.process_index() == 0:
        print(report.summary_table(results), flush=True)
        if results.get("judge"):
            print(_judge_line(results), flush=True)
        for name, d in (results.get("multiple_choice") or {}).items():
            print(f"{name}: {mc.describe(d)}", flush=True)
    return results


# ----------------------------------------------------------------------------------------------------
# The Python API.
# ----------------------------------------------------------------------------------------------------
def _same_tokenizer(tokenizer, path: str, field: str) -> None:
    """KL and reward scoring work on the policy's token ids: the other model must share its vocabulary."""
    try:
        other = checkpoints.load_tokenizer(path)
    except (OSError, ValueError):
        return  # no tokenizer files there: assume the policy's
    if other.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"config.eval.{field}={path!r}: its tokenizer differs from the checkpoint's; "
            "KL and reward scoring read the policy's token ids, so they must share one"
        )


def _global_batches(n: int, global_batch: int):
    """Index arrays [G] over 0..n-1 in order, the last one padded with -1 (padding rows)."""
    for start in range(0, n, global_batch):
        idx = np.arange(start, min(start + global_batch, n))
        yield np.concatenate([idx, np.full(global_batch - len(idx), -1, np.int64)])


class _Model(types.SimpleNamespace):
    """A loaded checkpoint: `module`, `config` (ModelConfig), `params`, `path`."""


def _load(path: str, mesh, head: str, dtype: str, cache: dict) -> _Model:
    key = (os.path.realpath(os.path.expanduser(path)), head)
    if key not in cache:
        cfg, params = checkpoints.load_hf_model(path, mesh=mesh, dtype=dtype, head=head)
        module = models.Transformer(cfg) if head == "lm" else models.ScalarHeadModel(cfg)
        cache[key] = _Model(module=module, config=cfg, params=params, path=path)
    return cache[key]


def _extra_eos(cfg) -> tuple[int, ...]:
    eos = cfg.eos_token_id
    return tuple(eos) if isinstance(eos, (tuple, list)) else (() if eos is None else (int(eos),))


def evaluate_checkpoint(
    path: str,
    prompts_path: str | Sequence[str],
    *,
    reference: str | None = None,
    reward_model: str | None = None,
    text_path: str | None = None,
    tokenizer: str | None = None,
    check_fn: str | Callable = DEFAULT_CHECK_FN,
    refusal_fn: str | Callable = DEFAULT_REFUSAL_FN,
    user_turn_fn: str | Callable = DEFAULT_USER_TURN_FN,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_prompt_length: int = 40,
    max_prompts: int = 0,
    batch_size: int = 64,
    text_max_length: int = 64,
    seed: int = 0,
    dtype: str = "float32",
    mesh: jax.sharding.Mesh | None = None,
    workdir: str | None = None,
    plots: bool = True,
    num_examples: int = 5,
    classifier: str | None = None,
    classifier_input: str = "prompt_answer",
    multiple_choice: str | Sequence[str] | None = None,
    mc_schema: str = "auto",
    mc_chat: bool = False,
    mc_truthfulqa_preamble: bool = False,
    mc_max_questions: int = 0,
    judge: str | None = None,
    judge_template: str = judge_lib.DEFAULT_TEMPLATE,
) -> dict:
    """Evaluates the HF checkpoint at `path`; returns the results dict (also `<workdir>/eval.json`).

    Args:
      path: policy checkpoint (HF directory with config.json, safetensors and a tokenizer).
      prompts_path: one prompt file, a list, or a comma-separated string. Rows as the data pipeline's
        kind="prompt" (a "prompt" string or message list, or "messages"), with an optional "answer"
        (accuracy is over rows that have one) and optional "should_refuse" labels (refusal rates).
      reference: checkpoint for the KL (log π − log π_ref on the policy's answers) and for the answers
        the win rate compares against; None skips both. Must share the policy's tokenizer.
      reward_model: a ScalarHead (`*ForSequenceClassification`) checkpoint; scores prompt + answer at the
        last token. None skips rewards and the win rate (which needs `reference` too).
      text_path: held-out text for perplexity: rows with "text", read with build_dataset(kind="clm") and
        split into chunks of `text_max_length` tokens (a directory or hub name gives its "test" split,
        as for prompt sets). None skips it.
      tokenizer: tokenizer directory; default the checkpoint's.
      check_fn: `(row, completion) -> bool`, callable or "module:function"; `refusal_fn`:
        `(completion) -> bool`; `user_turn_fn`: `(completion) -> bool` (the completion started a user
        turn). Each gets the completion decoded with special tokens kept (EOS visible), padding dropped.
      max_new_tokens: N, generated tokens at most; a row that has not emitted EOS by then is truncated.
      temperature, top_k, top_p: decoding (temperature 0 = greedy, the default).
      max_prompt_length: P, prompt tokens kept (longer prompts keep their last P).
      max_prompts: the first this many prompts of each set (0 = all).
      batch_size: prompts per global batch (a multiple of the mesh's data × fsdp).
      seed: sampling seed (unused when greedy).
      dtype: compute dtype of every model.
      mesh: default: every device on the fsdp axis.
      workdir: where eval.json, eval.md, completions.jsonl and plots go (process 0); None writes nothing.
      plots: PNG plots (needs matplotlib; skipped with a message if it is missing).
      num_examples: completions per set shown in eval.md.
      classifier: a single-logit `*ForSequenceClassification` directory (a reward model, a binary
        classifier) that scores the policy's decoded answers with its own tokenizer: classifier/mean and
        classifier/sigmoid_mean in every prompt set (`eval.classifier`). None skips it.
      classifier_input: "prompt_answer" (prompt + answer, as the trainers encode a pair) or "answer".
      multiple_choice: benchmark files (a list or comma-separated) in the MMLU or TruthfulQA-MC schema,
        scored by log-likelihood (`eval.multiple_choice`); each is one more set of `sets`, with the
        metrics mc/acc, mc/acc_norm (MMLU) or truthfulqa/mc1, mc1_norm, mc2. `prompts_path` may then be
        empty.
      mc_schema: "auto" (from the first row's keys), "mmlu" or "truthfulqa_mc".
      mc_chat: the context as a user message through the chat template.
      mc_truthfulqa_preamble: lm-eval's six-question QA primer before each TruthfulQA question.
      mc_max_questions: the first this many questions of each benchmark file (0 = all).
      judge: an HF chat model directory (its own tokenizer and chat template) that compares the policy's
        answer with the reference's to each prompt, in both orders, from its next-token probabilities of
        "1" and "2": judge/win_rate, judge/win_rate_hard, judge/position_consistency and
        judge/first_position_bias in every prompt set (`eval.judge`; needs `reference`). None skips it.
      judge_template: the judge's user message, with {question}, {answer_1}, {answer_2}.

    Returns:
      {"checkpoint", "reference", "reward_model", "text_path", "settings": {...},
       "sets": {name: {metric: value} for the keys in SET_METRICS (+ classifier/*); multiple-choice sets:
       num_prompts and their own metrics},
       "perplexity": {"perplexity", "nll", "num_tokens", "num_sequences"} or None, "wall_s",
       "classifier": path or None, "multiple_choice": {name: {"file", "schema", "by_subject", ...}} or None,
       "judge": path or None, "judge_truncated": {set name: pairs cut to fit the judge's window} or None}.
    """
    start = time.time()
    check_fn, refusal_fn, user_turn_fn = map(resolve_fn, (check_fn, refusal_fn, user_turn_fn))
    if mesh is None:
        mesh = sharding.make_mesh(1, -1, 1)
    batch_sharding = sharding.batch_sharding(mesh)
    shards = hosts.batch_shards(mesh)
    if batch_size % shards or batch_size % jax.process_count():
        raise ValueError(
            f"batch_size={batch_size} must divide by data × fsdp = {shards} and by the "
            f"{jax.process_count()} processes"
        )
    prompt_files = _split_paths(prompts_path)
    if judge and not reference:
        raise ConfigError(f"config.eval.judge={judge!r}: needs eval.reference (the answers it compares with)")
    if judge:
        judge_lib.check_template(judge_template)
    if classifier_input not in clf_lib.MODES:
        raise ConfigError(
            f"config.eval.classifier_input={classifier_input!r}: expected one of {clf_lib.MODES}"
        )
    mc_files = _split_paths(multiple_choice or [])
    names = _set_names(prompt_files + mc_files)
    set_names, mc_names = names[: len(prompt_files)], names[len(prompt_files) :]
    # Benchmark rows are read and checked before any model loads: a bad row fails in a second.
    benchmarks = {
        n: mc.load_items(
            f, mc_schema, truthfulqa_preamble=mc_truthfulqa_preamble, max_questions=mc_max_questions
        )
        for n, f in zip(mc_names, mc_files)
    }
    tok = checkpoints.load_tokenizer(tokenizer or path)
    loaded: dict = {}
    with jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else mesh:
        policy = _load(path, mesh, "lm", dtype, loaded)
        limit = policy.config.max_position_embeddings
        if max_prompt_length + max_new_tokens > limit:
            raise ConfigError(
                f"config.eval.max_new_tokens={max_new_tokens}: eval.max_prompt_length + "
                f"max_new_tokens = {max_prompt_length + max_new_tokens} exceeds {path}'s "
                f"max_position_embeddings={limit}"
            )
        ref = rm = None
        if reference:
            _same_tokenizer(tok, reference, "reference")
            ref = _load(reference, mesh, "lm", dtype, loaded)
        if reward_model:
            _same_tokenizer(tok, reward_model, "reward_model")
            rm = _load(reward_model, mesh, "score", dtype, loaded)
        clf = clf_lib.load_classifier(classifier, mesh, dtype, tokenizer=tok) if classifier else None
        jdg = None
        if judge:  # a judge that is one of the models above shares its loaded parameters
            judge_lib.check_judge(judge)
            jdg = judge_lib.load_judge(judge, model=_load(judge, mesh, "lm", dtype, loaded))

        eos_ids = sampling.eos_ids_of(tok, _extra_eos(policy.config))
        gen_kwargs = dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_ids=eos_ids,
            pad_id=sampling.pad_id_of(tok),
            mesh=mesh,
        )
        fns = {}  # one jitted function per (kind, model config): a reference of the same shape reuses them

        def fn_for(kind, m):
            key = (kind, m.config)
            if key not in fns:
                if kind == "generate":
                    fns[key] = sampling.make_generate_fn(
                        m.module, param_shardings=jax.tree.map(lambda x: x.sharding, m.params), **gen_kwargs
                    )
                elif kind == "logprobs":
                    fns[key] = make_completion_logprobs_fn(m.module)
                elif kind == "reward":
                    fns[key] = make_reward_fn(m.module)
                else:
                    fns[key] = make_nll_fn(m.module)
            return fns[key]

        rng = jax.random.key(seed)
        sets, examples, judge_truncated = {}, {}, {}
        for name, file in zip(set_names, prompt_files):
            source = sources.load_rows(file, "test")
            rows = [
                source[i] for i in range(len(source) if not max_prompts else min(max_prompts, len(source)))
            ]
            ds = pipeline.build_dataset(
                rows,
                kind="prompt",
                tokenizer=tok,
                max_length=max_prompt_length + 1,
                max_prompt_length=max_prompt_length,
            )
            out = _rollout_set(
                ds,
                policy,
                ref,
                rm,
                fn_for,
                batch_size,
                batch_sharding,
                jax.random.fold_in(rng, len(sets)),
                ref_answers=jdg is not None,
            )
            sets[name], examples[name] = _set_metrics(
                rows,
                ds,
                out,
                tok,
                eos_ids,
                check_fn,
                refusal_fn,
                user_turn_fn,
                ref is not None,
                rm is not None,
            )
            if clf is not None:
                answers = _decode(tok, out["tokens"], out["mask"], keep_special=False)
                prompts = [r.get("prompt", r.get("messages")) for r in rows]
                scores = clf_lib.score_answers(
                    clf,
                    prompts,
                    answers,
                    mode=classifier_input,
                    batch_size=batch_size,
                    batch_sharding=batch_sharding,
                )
                sets[name].update(clf_lib.summary(scores))
                for rec, s in zip(examples[name], scores):
                    rec["classifier"] = float(s)
            if jdg is not None:
                sets[name], judge_truncated[name] = _judge_set(
                    jdg,
                    rows,
                    out,
                    tok,
                    sets[name],
                    examples[name],
                    judge_template,
                    batch_size,
                    batch_sharding,
                )
        mc_details, mc_records = {}, {}
        if benchmarks:
            ll_fn = make_mc_fn(policy.module)
            for name, file in zip(mc_names, mc_files):
                schema, items = benchmarks[name]
                sets[name], details, mc_records[name] = mc.evaluate_items(
                    schema,
                    items,
                    tok,
                    ll_fn,
                    policy.params,
                    batch_size=batch_size,
                    batch_sharding=batch_sharding,
                    max_length=limit,
                    chat=mc_chat,
                )
                mc_details[name] = {"file": str(file), **details}
        ppl = None
        if text_path:
            ppl = _perplexity(
                text_path,
                tok,
                fn_for("nll", policy),
                policy.params,
                text_max_length,
                batch_size,
                batch_sharding,
            )

    results = {
        "checkpoint": str(path),
        "reference": reference or None,
        "reward_model": reward_model or None,
        "text_path": text_path or None,
        "settings": {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "max_prompt_length": max_prompt_length,
            "max_prompts": max_prompts,
            "batch_size": batch_size,
            "seed": seed,
            "dtype": dtype,
            "check_fn": _fn_name(check_fn),
            "prompt_files": prompt_files,
        },
        "sets": sets,
        "perplexity": ppl,
        "wall_s": round(time.time() - start, 2),
        "classifier": str(classifier) if classifier else None,
        "multiple_choice": mc_details or None,
        "judge": str(judge) if judge else None,
        "judge_truncated": judge_truncated if judge else None,
    }
    if classifier:
        results["settings"]["classifier_input"] = classifier_input
    if judge:
        results["settings"]["judge_template"] = judge_template
        results["settings"]["judge_tokens"] = f"{list(jdg.token_ids)} ({jdg.token_note})"
    if workdir and jax.process_index() == 0:
        report.write_outputs(results, examples, workdir, plots=plots, num_examples=num_examples)
        if mc_details:
            _write_multiple_choice(workdir, mc_details, mc_records)
        if judge:
            _write_judge(workdir, results)
    return results


def _judge_set(jdg, rows, out, tok, metrics_, records, template, batch_size, batch_sharding):
    """The judge's verdicts on one prompt set: (metrics with the judge's inserted after win_rate, number
    of pairs cut to fit its window); per-answer verdicts into `records`."""
    answers = _decode(tok, out["tokens"], out["mask"], keep_special=False)
    ref_answers = _decode(tok, out["ref_tokens"], out["ref_mask"], keep_special=False)
    v = judge_lib.judge_pairs(
        jdg.module,
        jdg.params,
        jdg.tokenizer,
        [r.get("prompt", r.get("messages")) for r in rows],
        answers,
        ref_answers,
        template=template,
        batch_size=batch_size,
        batch_sharding=batch_sharding,
        verdict_fn=jdg.fn,
    )
    m = {}
    for k, val in metrics_.items():
        m[k] = val
        if k == "win_rate":
            m.update(judge_lib.summary(v))
    for rec, p, p_ab, p_ba, cut in zip(records, v["p"], v["p_ab"], v["p_ba"], v["truncated"]):
        rec["judge"] = {
            "p_policy_better": float(p),
            "p_policy_first": float(p_ab),
            "p_reference_first": float(p_ba),
            "truncated": bool(cut),
        }
    return m, int(v["truncated"].sum())


def _judge_line(results: dict) -> str:
    cut = ", ".join(f"{s} {n}" for s, n in results["judge_truncated"].items())
    return (
        f"judge {results['judge']}: verdict tokens {results['settings']['judge_tokens']}; "
        f"pairs cut to fit its window: {cut}"
    )


def _write_judge(workdir: str, results: dict) -> None:
    """A section of eval.md about the LLM judge."""
    lines = [
        "## LLM judge",
        "",
        f"- judge: `{results['judge']}`; {_judge_line(results).split('; ', 1)[1]}",
        "- template: " + report._cell(results["settings"]["judge_template"]),
        "",
        (
            "Each prompt's policy answer (A) and reference answer (B) are judged twice, A as Answer 1 and then B "
            "as Answer 1; p(Answer 1 wins) = softmax over the judge's next-token logits of '1' and '2', and "
            "p(A better) is the mean of the two orders (position bias cancels). judge/win_rate: mean p(A "
            "better); judge/win_rate_hard: p > 0.5 (ties ½); judge/position_consistency: both orders pick the "
            "same winner; judge/first_position_bias: mean p(Answer 1 wins) over all judgements (0.5 = none). "
            "Per-answer verdicts are the `judge` field of completions.jsonl."
        ),
        "",
    ]
    with open(os.path.join(workdir, "eval.md"), "a") as f:
        f.write("\n".join(lines))


def _write_multiple_choice(workdir: str, details: dict, records: dict) -> None:
    """multiple_choice.jsonl (a record per question) and a section of eval.md about the benchmarks."""
    with open(os.path.join(workdir, "multiple_choice.jsonl"), "w") as f:
        for name, recs in records.items():
            f.writelines(json.dumps({"set": name, **r}, ensure_ascii=False) + "\n" for r in recs)
    lines = ["## Multiple choice", ""]
    for name, d in details.items():
        lines.append(f"- {name} (`{d['file']}`): {mc.describe(d)}")
        if d.get("by_subject"):
            lines.append(
                "  - accuracy by subject: " + ", ".join(f"{s} {a:.3f}" for s, a in d["by_subject"].items())
            )
    lines += [
        "",
        (
            "Scored by log-likelihood as lm-evaluation-harness does: mc/acc, the choice with the highest summed "
            "log-probability of its continuation is the answer; mc/acc_norm, the same divided by the "
            "continuation's UTF-8 byte length; truthfulqa/mc1, the true choice of mc1_targets wins; "
            "truthfulqa/mc2, probability mass on the true choices of mc2_targets. Per-choice log-likelihoods "
            "are in multiple_choice.jsonl."
        ),
        "",
    ]
    with open(os.path.join(workdir, "eval.md"), "a") as f:
        f.write("\n".join(lines))


def _fn_name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def _rollout_set(
    ds, policy, ref, rm, fn_for, batch_size, batch_sharding, rng, ref_answers: bool = False
) -> dict:
    """Generates and scores every prompt of `ds`; returns numpy arrays [n, ...] (padding rows dropped):
    tokens/mask [n, N]; with a reference logprobs/ref_logprobs [n, N]; with a reward model reward [n];
    with a reference and a reward model (or `ref_answers`) ref_tokens/ref_mask [n, N] (the reference's
    own answers), and with both ref_reward [n]."""
    chunks = []
    for b, idx in enumerate(_global_batches(len(ds), batch_size)):
        local = ds.take(hosts.local_rows(idx))
        ids, seg = (hosts.to_global(local[k], batch_sharding) for k in PROMPT_KEYS)
        key = jax.random.fold_in(rng, b)
        out = fn_for("generate", policy)(policy.params, ids, seg, key)
        row = {"tokens": out.tokens, "mask": out.mask}
        if ref is not None:
            row["logprobs"] = fn_for("logprobs", policy)(policy.params, ids, seg, out.tokens, out.mask)
            row["ref_logprobs"] = fn_for("logprobs", ref)(ref.params, ids, seg, out.tokens, out.mask)
        if rm is not None:
            row["reward"] = fn_for("reward", rm)(rm.params, ids, seg, out.tokens, out.mask)
        if ref is not None and (rm is not None or ref_answers):
            # the reference's own answers, decoded the same way (its own rng stream)
            ref_out = fn_for("generate", ref)(ref.params, ids, seg, jax.random.fold_in(key, 1))
            row["ref_tokens"], row["ref_mask"] = ref_out.tokens, ref_out.mask
            if rm is not None:
                row["ref_reward"] = fn_for("reward", rm)(rm.params, ids, seg, ref_out.tokens, ref_out.mask)
        row = hosts.gather(row)
        keep = idx >= 0
        chunks.append({k: np.asarray(v)[keep] for k, v in row.items()})
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _decode(tok, tokens, mask, keep_special: bool) -> list[str]:
    return sampling.decode_completions(
        tok, types.SimpleNamespace(tokens=tokens, mask=mask), skip_special_tokens=not keep_special
    )


def _set_metrics(rows, ds, out, tok, eos_ids, check_fn, refusal_fn, user_turn_fn, has_ref, has_rm):
    """Host-side metrics of one prompt set: (metrics dict with every SET_METRICS key, per-prompt records)."""
    raw = _decode(tok, out["tokens"], out["mask"], keep_special=True)  # EOS / user-turn tokens visible
    clean = _decode(tok, out["tokens"], out["mask"], keep_special=False)  # for distinct-n
    lengths = out["mask"].sum(-1)
    answers = [str(a) for a in ds.host["answer"]]
    has_answer = np.asarray([a != "" for a in answers])
    correct = np.asarray([bool(check_fn(r, t)) if h else False for r, t, h in zip(rows, raw, has_answer)])
    eos = metrics.ended_with_eos(out["tokens"], out["mask"], eos_ids)
    user = np.asarray([bool(user_turn_fn(t)) for t in raw])
    refused = np.asarray([bool(refusal_fn(t)) for t in raw])
    labelled = all("should_refuse" in r for r in rows)
    should = np.asarray([bool(r.get("should_refuse")) for r in rows])

    m = dict.fromkeys(SET_METRICS)
    m["num_prompts"] = len(rows)
    m["accuracy"] = metrics.accuracy(correct[has_answer])
    m["stop_rate"] = metrics.stop_rate(eos, user)
    m["truncation_rate"] = metrics.accuracy(~eos)
    m["speaks_as_user_rate"] = metrics.accuracy(user)
    m["length/mean"] = metrics.mean_length(lengths)
    m["distinct/1"] = metrics.distinct_n(clean, 1)
    m["distinct/2"] = metrics.distinct_n(clean, 2)
    fragment = np.asarray([metrics.is_fragment(t, int(n)) for t, n in zip(clean, lengths)])
    m["text/fragment_rate"] = metrics.accuracy(fragment)
    kl = None
    if has_ref:
        m.update(metrics.kl_summary(out["logprobs"], out["ref_logprobs"], out["mask"]))
        kl = metrics.sequence_kl(out["logprobs"], out["ref_logprobs"], out["mask"])
    if has_rm:
        m["reward/mean"] = float(np.mean(out["reward"]))
        if has_ref:
            m["reward/reference_mean"] = float(np.mean(out["ref_reward"]))
            m["win_rate"] = metrics.win_rate(out["reward"], out["ref_reward"])
    if labelled:
        m["refusal/rate"], m["refusal/over_rate"] = metrics.refusal_rates(refused, should)
        whole = eos & ~user & ~fragment & np.asarray([metrics.is_complete_sentence(t) for t in clean])
        m["refusal/complete_rate"] = metrics.complete_refusal_rate(refused, whole, should)

    ref_raw = (
        _decode(tok, out["ref_tokens"], out["ref_mask"], keep_special=True) if "ref_tokens" in out else None
    )
    records = []
    for i, row in enumerate(rows):
        rec = {
            "index": i,
            "prompt": row.get("prompt", row.get("messages")),
            "answer": answers[i] or None,
            "completion": raw[i],
            "correct": bool(correct[i]) if has_answer[i] else None,
            "stopped": bool(eos[i] and not user[i]),
            "speaks_as_user": bool(user[i]),
            "refused": bool(refused[i]),
            "fragment": bool(fragment[i]),
            "length": int(lengths[i]),
        }
        if labelled:
            rec["should_refuse"] = bool(should[i])
        if kl is not None:
            rec["kl"] = float(kl[i])
        if has_rm:
            rec["reward"] = float(out["reward"][i])
        if ref_raw is not None:
            rec["reference_completion"] = ref_raw[i]
        if "ref_reward" in out:
            rec["reference_reward"] = float(out["ref_reward"][i])
        records.append(rec)
    return m, records


def _perplexity(text_path, tok, nll_fn, params, max_length, batch_size, batch_sharding) -> dict:
    """Token-mean NLL of held-out text over every chunk of `max_length` tokens, and its exponential."""
    ds = pipeline.build_dataset(text_path, kind="clm", tokenizer=tok, max_length=max_length, split="test")
    nll, count = 0.0, 0.0
    for idx in _global_batches(len(ds), batch_size):
        local = ds.take(hosts.local_rows(idx))
        batch = {
            k: hosts.to_global(local[k], batch_sharding)
            for k in ("input_ids", "targets", "loss_mask", "positions", "segment_ids")
        }
        s, c = jax.device_get(nll_fn(params, batch))
        nll, count = nll + float(s), count + float(c)
    return {
        "perplexity": metrics.perplexity(nll, count),
        "nll": nll / count if count else None,
        "num_tokens": int(count),
        "num_sequences": len(ds),
        "text_path": str(text_path),
    }
