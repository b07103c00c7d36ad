"""An LLM judge: which of two answers to the same prompt is better, read off any Hugging Face chat model.

For each prompt and answers (a, b) the judge reads one user message, `template` filled with the
question and the two answers and rendered by the judge's *own* chat template with its generation
prompt (`apply_chat_template(..., add_generation_prompt=True)`, as `data.templates.encode_prompt`
does), and its verdict is read from the next-token logits of the tokens "1" and "2": no sampling, one
batched forward per batch (deterministic and cheap)::

    p(Answer 1 wins) = softmax([logit("1"), logit("2")])[0] = sigmoid(logit("1") - logit("2"))

Every pair is judged in both orders, a as Answer 1 and then b as Answer 1, and averaged to cancel the
judge's position bias::

    p1 = p(Answer 1 wins | a first)        p2 = p(Answer 2 wins | b first)        p(a better) = (p1 + p2) / 2

computed as 0.5 + (tanh(d1 / 2) + tanh(d2 / 2)) / 4 with d the logit differences for a, so identical
answers (d2 = -d1 exactly) give exactly 0.5 whatever the judge's bias. Identical judge inputs are
forwarded once (also what makes that exact).

Verdict tokens: the ids of "1" and "2" in the judge's tokenizer (`tokenizer("1",
add_special_tokens=False)`). Where a tokenizer splits them (e.g. SentencePiece's "▁" + "1"), the first
token at which the two encodings differ is used (the first token, unless it is a shared prefix); two
identical encodings are refused (`CheckpointError`). `verdict_tokens` returns the ids and a note.

Too long for the judge's window (`max_position_embeddings`, or `max_length`): the question loses its
first tokens (left truncation, as the evaluator truncates prompts) until the input fits; if the
question is gone and it still does not fit, the longer answer loses its last tokens, then the other;
such pairs are counted (`truncated`). A template that alone overflows the window is a `ConfigError`.

Metrics (`summary`): judge/win_rate = mean p(a better); judge/win_rate_hard = fraction with p > 0.5
(ties ½); judge/position_consistency = fraction of pairs where both orders pick the same winner;
judge/first_position_bias = mean p(Answer 1 wins) over all 2N judgements (0.5 = no position bias).

`pairwise_preferences(...)` -> p(a better) [N] is a pure function of (judge module, params, tokenizer,
texts), for the evaluator (`eval.judge`) and for online preference rounds (`judge_pairs` also returns
each order's probability and the truncation flags).

Round robin (online DPO's judge labeller, `reward.judge`): n answers to one prompt are judged in every
one of their n(n-1)/2 pairs (both orders, as above), and each answer's score is its mean win probability
against the other n-1 (a Borda count with probabilities; Copeland's with the hard verdicts)::

    s_i = 1/(n-1) · Σ_{j≠i} p(i ≻ j),    p(j ≻ i) = 1 - p(i ≻ j)

so s ∈ [0, 1], Σ_i s_i = n/2, and answers that are all identical score exactly ½ each
(`round_robin`, `round_robin_scores`).
"""

from __future__ import annotations

import os
import string
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import checkpoints, hosts, models
from jaxalign.data import templates
from jaxalign.errors import CheckpointError, ConfigError
from jaxalign.eval.multiple_choice import width_for

# In the style of MT-Bench's pairwise judge prompt and AlpacaEval's comparison prompt, asking for one
# token so that the verdict is the next token.
DEFAULT_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the answers given by two AI assistants "
    "to the user question below. Choose the answer that follows the user's instructions and answers the "
    "question better: consider helpfulness, correctness, relevance and level of detail. Do not let the "
    "order in which the answers appear or their length influence your decision.\n\n"
    "[Question]\n{question}\n\n"
    "[Answer 1]\n{answer_1}\n\n"
    "[Answer 2]\n{answer_2}\n\n"
    "Which answer is better? Reply with 1 or 2."
)
FIELDS = ("question", "answer_1", "answer_2")
VERDICTS = ("1", "2")
METRICS = ("judge/win_rate", "judge/win_rate_hard", "judge/position_consistency", "judge/first_position_bias")


# ----------------------------------------------------------------------------------------------------
# Checking a judge and its template.
# ----------------------------------------------------------------------------------------------------
def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def check_template(template: str, field: str = "eval.judge_template") -> None:
    """ConfigError unless `template` is a str.format string with exactly {question}, {answer_1},
    {answer_2} (literal braces doubled)."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ConfigError(
            f"config.{field}={_short(template)}: {e} (literal braces must be doubled)"
        ) from None
    missing, extra = set(FIELDS) - names, names - set(FIELDS)
    if missing or extra:
        why = []
        if missing:
            why.append("it lacks " + ", ".join("{" + f + "}" for f in FIELDS if f in missing))
        if extra:
            why.append("unknown fields " + ", ".join("{" + f + "}" for f in sorted(extra)))
        raise ConfigError(
            f"config.{field}={_short(template)}: {'; '.join(why)}; expected {{question}}, {{answer_1}} and "
            "{answer_2} (literal braces doubled)"
        )


def check_judge(path: str) -> None:
    """CheckpointError (naming the directory) unless `path` is a causal-LM HF directory with a tokenizer
    that has a chat template."""
    path = os.path.expanduser(str(path))
    hf = checkpoints.hf.check_hf_dir(path)
    archs = hf.get("architectures") or []
    if any(a.endswith(("ForSequenceClassification", "ForTokenClassification", "RewardModel")) for a in archs):
        raise CheckpointError(
            f"{os.path.join(path, 'config.json')}: architectures={archs} is a classifier; the judge must be "
            "a chat (causal LM) model whose next token is its verdict"
        )
    checkpoints.tokenizer.check_tokenizer_dir(path)


def verdict_tokens(tokenizer) -> tuple[tuple[int, int], str]:
    """The ids read for "1" and "2", and a note saying how they were found (see the module docstring)."""
    enc = [list(tokenizer(v, add_special_tokens=False)["input_ids"]) for v in VERDICTS]
    if all(len(e) == 1 for e in enc):
        return (enc[0][0], enc[1][0]), "single tokens"
    k = next((i for i, (x, y) in enumerate(zip(*enc)) if x != y), None)
    if k is None:
        raise CheckpointError(
            f"{getattr(tokenizer, 'name_or_path', 'the judge tokenizer')}: '1' and '2' encode as {enc[0]} and "
            f"{enc[1]}; no token tells them apart, so the verdict cannot be read"
        )
    return (enc[0][k], enc[1][k]), f"'1' -> {enc[0]}, '2' -> {enc[1]}: token {k} of each is read"


def check_fits(tokenizer, window: int, template: str, field: str = "eval.judge_template") -> None:
    """ConfigError unless `template` with empty question and answers fits the judge's `window` tokens (a
    longer question or answer is then cut to fit, `encode_judgement`)."""
    content = template.format(question="", answer_1="", answer_2="")
    n = len(templates.encode_prompt(tokenizer, [{"role": "user", "content": content}]))
    if n > window:
        raise ConfigError(
            f"config.{field}={_short(template)}: the template alone is {n} tokens for the judge, over its "
            f"window of {window}; use a shorter template (or a judge with a longer window)"
        )


# ----------------------------------------------------------------------------------------------------
# Judge inputs.
# ----------------------------------------------------------------------------------------------------
def question_text(prompt: Any) -> str:
    """A prompt as the question the judge reads: a string as is; messages as the only message's content,
    else "role: content" lines."""
    if isinstance(prompt, str):
        return prompt
    msgs = list(prompt or [])
    if len(msgs) == 1:
        return str(msgs[0].get("content", ""))
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in msgs)


def encode_judgement(
    tokenizer, question: str, answer_1: str, answer_2: str, template: str = DEFAULT_TEMPLATE, max_length=None
) -> tuple[list[int], bool]:
    """Judge input ids (the filled template as one user message, generation prompt added) and whether
    anything was cut to fit `max_length` (see the module docstring)."""

    def enc(q, a1, a2):
        content = template.format(question=q, answer_1=a1, answer_2=a2)
        return templates.encode_prompt(tokenizer, [{"role": "user", "content": content}]).tolist()

    ids = enc(question, answer_1, answer_2)
    if max_length is None or len(ids) <= max_length:
        return ids, False

    def tok(text):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def dec(t):
        return tokenizer.decode(t, skip_special_tokens=False)

    q = tok(question)
    while len(ids) > max_length and q:  # left-truncate the question
        q = q[min(len(q), len(ids) - max_length) :]
        ids = enc(dec(q), answer_1, answer_2)
    a = [tok(answer_1), tok(answer_2)]
    while len(ids) > max_length and (a[0] or a[1]):  # then the longer answer's end
        j = 0 if len(a[0]) >= len(a[1]) else 1
        a[j] = a[j][: max(0, len(a[j]) - max(1, min(len(ids) - max_length, len(a[j]) - len(a[1 - j]))))]
        ids = enc(dec(q), dec(a[0]), dec(a[1]))
    if len(ids) > max_length:
        raise ConfigError(
            f"config.eval.judge_template={_short(template)}: the template alone is {len(ids)} tokens for "
            f"the judge, over its window of {max_length}; use a shorter template (or a judge with a longer "
            "window)"
        )
    return ids, True


# ----------------------------------------------------------------------------------------------------
# Device side: one jitted forward, the logits of the two verdict tokens after the last input token.
# ----------------------------------------------------------------------------------------------------
def make_verdict_fn(module, token_ids: tuple[int, int]) -> Callable:
    """`fn(params, input_ids, segment_ids, last) -> [B, 2]` float32: the logits of `token_ids` after
    position `last` of each right-padded row. Only the final hidden state of that position meets the LM
    head (two rows of it), never the [B, T, V] logits."""
    tids = jnp.asarray(token_ids, jnp.int32)
    cfg = module.config

    def fn(params, input_ids, segment_ids, last):
        pos = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
        hidden = module.apply({"params": params}, input_ids, pos, segment_ids, hidden_only=True)
        h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(cfg.dtype)  # [B, D]
        if cfg.tie_word_embeddings:
            head = jnp.take(params["embed"]["embedding"], tids, axis=0)  # [2, D]
        else:
            head = jnp.take(params["lm_head"]["kernel"], tids, axis=1).T  # [2, D]
        return jnp.dot(h, head.astype(cfg.dtype).T, preferred_element_type=jnp.float32)

    return jax.jit(fn)


def verdict_logits(
    fn, params, seqs: Sequence[Sequence[int]], batch_size: int, batch_sharding=None, limit=None
):
    """[n, 2] float32 verdict logits of token sequences (each <= `limit`), in batches of `batch_size` rows
    sorted by length, right-padded to a power-of-two width (one compile per width). Identical sequences
    are forwarded once. Without `batch_sharding` the arrays go in as they are (one process)."""
    uniq: dict[tuple, int] = {}
    inv = np.asarray([uniq.setdefault(tuple(s), len(uniq)) for s in seqs], np.int64)
    useqs = list(uniq)
    lengths = np.asarray([len(s) for s in useqs])
    limit = limit or int(lengths.max(initial=1))
    order = np.argsort(-lengths, kind="stable")
    out = np.zeros((len(useqs), 2), np.float32)
    for start in range(0, len(useqs), batch_size):
        idx = order[start : start + batch_size]
        w = width_for(int(lengths[idx].max()), limit)
        ids, seg = np.zeros((batch_size, w), np.int32), np.zeros((batch_size, w), np.int32)
        last = np.zeros(batch_size, np.int32)
        for r, j in enumerate(idx):
            ids[r, : lengths[j]], seg[r, : lengths[j]], last[r] = useqs[j], 1, lengths[j] - 1
        args = (ids, seg, last)
        if batch_sharding is not None:
            args = [hosts.to_global(hosts.local_rows(a), batch_sharding) for a in args]
        out[idx] = np.asarray(hosts.gather(fn(params, *args)))[: len(idx)]
    return out[inv] if len(seqs) else np.zeros((0, 2), np.float32)


# ----------------------------------------------------------------------------------------------------
# Both orders, averaged.
# ----------------------------------------------------------------------------------------------------
def _half_tanh(d):
    return np.tanh(np.asarray(d, np.float64) / 2)


def judge_pairs(
    judge_model,
    judge_params,
    tokenizer,
    prompts: Sequence[Any],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    *,
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 32,
    batch_sharding=None,
    max_length: int | None = None,
    logits_fn: Callable[[list[list[int]]], np.ndarray] | None = None,
    verdict_fn: Callable | None = None,
) -> dict:
    """Judges every (prompt, a, b) in both orders. Returns numpy arrays [N]:
      p          p(a better) = (p_ab + p_ba) / 2
      p_ab       p(a wins) with a as Answer 1 (= p(Answer 1 wins) in that order)
      p_ba       p(a wins) with b as Answer 1 (= p(Answer 2 wins) in that order)
      truncated  bool: either order's input was cut to fit the window
    `logits_fn(seqs) -> [n, 2]` replaces the model's forward (tests; another backend); by default it
    is `verdict_logits` over `verdict_fn` (default `make_verdict_fn(judge_model, verdict_tokens(tokenizer))`;
    pass one to reuse its compilations across calls)."""
    if not len(prompts) == len(answers_a) == len(answers_b):
        raise ValueError(f"{len(prompts)} prompts, {len(answers_a)} answers_a, {len(answers_b)} answers_b")
    n = len(prompts)
    if logits_fn is None:
        limit = judge_model.config.max_position_embeddings
        max_length = min(max_length or limit, limit)
        fn = verdict_fn or make_verdict_fn(judge_model, verdict_tokens(tokenizer)[0])

        def logits_fn(seqs):
            return verdict_logits(fn, judge_params, seqs, batch_size, batch_sharding, max_length)

    seqs, cut = [], np.zeros((2, n), bool)
    for order, (first, second) in enumerate(((answers_a, answers_b), (answers_b, answers_a))):
        for i in range(n):
            ids, cut[order, i] = encode_judgement(
                tokenizer, question_text(prompts[i]), first[i], second[i], template, max_length
            )
            seqs.append(ids)
    logits = np.asarray(logits_fn(seqs), np.float64).reshape(2, n, 2) if n else np.zeros((2, 0, 2))
    d_ab = logits[0, :, 0] - logits[0, :, 1]  # a is Answer 1: a wins by "1"
    d_ba = logits[1, :, 1] - logits[1, :, 0]  # a is Answer 2: a wins by "2"
    t_ab, t_ba = _half_tanh(d_ab), _half_tanh(d_ba)
    return {
        "p": 0.5 + (t_ab + t_ba) / 4,
        "p_ab": 0.5 + t_ab / 2,
        "p_ba": 0.5 + t_ba / 2,
        "truncated": cut.any(axis=0),
    }


def pairwise_preferences(
    judge_model,
    judge_params,
    tokenizer,
    prompts: Sequence[Any],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    **kwargs,
) -> np.ndarray:
    """p(answer a better than answer b) [N] float64 in [0, 1], both orders averaged (`judge_pairs`)."""
    return judge_pairs(judge_model, judge_params, tokenizer, prompts, answers_a, answers_b, **kwargs)["p"]


def round_robin(p, n: int) -> np.ndarray:
    """Pairwise preferences -> round-robin scores (module docstring). `p`: [P, n(n-1)/2] (or flat),
    p(i ≻ j) for the pairs i < j of each prompt in `np.triu_indices(n, 1)` order ((0, 1), (0, 2), ...,
    (n-2, n-1), as `itertools.combinations`). Returns [P, n] float64: s_i = mean over j ≠ i of p(i ≻ j)."""
    if n < 2:
        raise ValueError(f"n={n}: a round robin needs two answers")
    i, j = np.triu_indices(n, 1)
    p = np.asarray(p, np.float64).reshape(-1, len(i))
    wins = np.zeros((p.shape[0], n, n))
    wins[:, i, j] = p
    wins[:, j, i] = 1.0 - p
    return wins.sum(-1) / (n - 1)


def round_robin_scores(
    judge_model,
    judge_params,
    tokenizer,
    prompts: Sequence[Any],
    answers: Sequence[str],
    n: int,
    **kwargs,
) -> dict:
    """Each answer's round-robin score among the `n` answers to its prompt: answers [P·n] (rows
    [p·n, (p+1)·n) answer prompts[p]) -> {"score": [P·n] float64 (`round_robin`), "truncated": judge
    inputs of pairs cut to fit the window}. `kwargs` go to `judge_pairs` (template, batch_size, ...)."""
    if len(answers) != len(prompts) * n:
        raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts × n={n}")
    i, j = np.triu_indices(n, 1)
    rows_a = (np.arange(len(prompts))[:, None] * n + i).reshape(-1)
    rows_b = (np.arange(len(prompts))[:, None] * n + j).reshape(-1)
    v = judge_pairs(
        judge_model,
        judge_params,
        tokenizer,
        [prompts[r // n] for r in rows_a],
        [answers[r] for r in rows_a],
        [answers[r] for r in rows_b],
        **kwargs,
    )
    return {"score": round_robin(v["p"], n).reshape(-1), "truncated": int(v["truncated"].sum())}


def summary(verdicts: dict) -> dict:
    """The judge metrics of `judge_pairs`' output (None for no pairs)."""
    p, p_ab, p_ba = (np.asarray(verdicts[k], np.float64) for k in ("p", "p_ab", "p_ba"))
    if not p.size:
        return dict.fromkeys(METRICS)
    first = np.concatenate([p_ab, 1 - p_ba])  # p(Answer 1 wins) in each judgement
    return {
        "judge/win_rate": float(np.mean(p)),
        "judge/win_rate_hard": float(np.mean((p > 0.5) + 0.5 * (p == 0.5))),
        "judge/position_consistency": float(np.mean(np.sign(p_ab - 0.5) == np.sign(p_ba - 0.5))),
        "judge/first_position_bias": float(np.mean(first)),
    }


# ----------------------------------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------------------------------
class Judge(types.SimpleNamespace):
    """A loaded judge: path, module (Transformer), config, params, tokenizer, token_ids, token_note, fn
    (`make_verdict_fn`, jitted once)."""


def load_judge(path: str, mesh=None, dtype: str = "float32", model=None) -> Judge:
    """Checks (`check_judge`) and loads `path` with its own tokenizer; `model` (an object with module,
    config, params) reuses an already loaded copy of the same checkpoint."""
    check_judge(path)
    tok = checkpoints.load_tokenizer(path)
    if not getattr(tok, "chat_template", None):
        raise CheckpointError(
            f"{path}: its tokenizer has no chat template; the judge must be a chat model (the verdict is the "
            "next token of its assistant turn)"
        )
    token_ids, note = verdict_tokens(tok)
    if model is None:
        cfg, params = checkpoints.load_hf_model(path, mesh=mesh, dtype=dtype, head="lm")
        model = types.SimpleNamespace(module=models.Transformer(cfg), config=cfg, params=params)
    return Judge(
        path=str(path),
        module=model.module,
        config=model.config,
        params=model.params,
        tokenizer=tok,
        token_ids=token_ids,
        token_note=note,
        fn=make_verdict_fn(model.module, token_ids),
    )
