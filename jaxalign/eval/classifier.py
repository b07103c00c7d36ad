"""Any local Hugging Face `*ForSequenceClassification` checkpoint as a scorer of answers.

A reward model, or a single-logit classifier (e.g. a toxicity classifier whose one logit is "toxic"),
reads each answer with its *own* tokenizer (so it need not share the policy's vocabulary, unlike
`eval.reward_model`, which reads the policy's token ids) and gives the score at the last real token, as
transformers' sequence classifiers and our reward models do. Inputs (`mode`):

  "prompt_answer"  prompt + answer encoded as the trainers encode a prompt/completion pair
                   (`data.templates.encode_prompt_completion`: chat messages through the classifier
                   tokenizer's chat template, plain strings as tokenizer(prompt) + answer + EOS);
  "answer"         the answer alone, tokenizer(answer) + EOS.

Metrics per prompt set: classifier/mean (the mean raw score: a reward, or a logit) and
classifier/sigmoid_mean (the mean of sigmoid(score): for a single-logit binary classifier, the mean
probability of its label, `id2label["0"]`).

Only num_labels = 1 heads load (`checkpoints.load_hf_model(head="score")` reads a [1, D] score head);
a checkpoint with num_labels > 1 (softmax over labels such as "toxic"/"non-toxic") is refused with one
line naming its config.json.
"""

from __future__ import annotations

import os
import types
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxalign import checkpoints, hosts, models
from jaxalign.data import templates
from jaxalign.errors import CheckpointError
from jaxalign.eval.multiple_choice import width_for

MODES = ("prompt_answer", "answer")
_CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "RewardModel")


def num_labels_of(hf: dict) -> int:
    """transformers' rule: `num_labels`, else len(id2label), else 2 (PretrainedConfig's default)."""
    if hf.get("num_labels") is not None:
        return int(hf["num_labels"])
    if isinstance(hf.get("id2label"), dict) and hf["id2label"]:
        return len(hf["id2label"])
    return 2


def check_classifier(path: str) -> dict:
    """Raises CheckpointError (``<dir>/config.json: <why>``) unless `path` is a sequence classifier with
    one label whose checkpoint loads; returns {"num_labels", "label"}."""
    path = os.path.expanduser(str(path))
    hf = checkpoints.hf.check_hf_dir(path)
    cfg_file = os.path.join(path, "config.json")
    archs = hf.get("architectures") or []
    if not any(a.endswith(_CLASSIFIER_SUFFIXES) for a in archs):
        raise CheckpointError(
            f"{cfg_file}: architectures={archs} is not a *ForSequenceClassification classifier; "
            "a causal LM has no trained score head (its scores would be random)"
        )
    n = num_labels_of(hf)
    id2label = hf.get("id2label") or {}
    if n != 1:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(id2label.items())) or "none named"
        raise CheckpointError(
            f"{cfg_file}: num_labels={n} (labels {labels}); only single-logit classifiers "
            "(num_labels=1: a reward model, or a binary classifier's one logit) are supported as "
            "eval.classifier, since load_hf_model(head='score') reads a [1, hidden] score head"
        )
    return {"num_labels": n, "label": str(id2label.get("0", id2label.get(0, "LABEL_0")))}


class Classifier(types.SimpleNamespace):
    """A loaded classifier: path, module (ScalarHeadModel), params, tokenizer, label, fn (jitted)."""


def load_classifier(path: str, mesh=None, dtype: str = "float32", tokenizer: Any = None) -> Classifier:
    """Checks (`check_classifier`) and loads `path`; its tokenizer is the directory's own (else
    `tokenizer`, a tokenizer object or directory)."""
    info = check_classifier(path)
    try:
        tok = checkpoints.load_tokenizer(path)
    except CheckpointError:
        if tokenizer is None:
            raise
        tok = (
            checkpoints.load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        )
    cfg, params = checkpoints.load_hf_model(path, mesh=mesh, dtype=dtype, head="score")
    module = models.ScalarHeadModel(cfg)

    def fn(params, ids, seg):
        pos = np.arange(ids.shape[1], dtype=np.int32)[None, :].repeat(ids.shape[0], 0)
        scores = module.apply({"params": params}, ids, pos, seg)
        return models.last_token_scores(scores, seg)

    return Classifier(
        path=str(path),
        module=module,
        config=cfg,
        params=params,
        tokenizer=tok,
        label=info["label"],
        fn=jax.jit(fn),
    )


def encode(tokenizer, prompt: Any, answer: str, mode: str = "prompt_answer") -> list[int]:
    """Token ids the classifier reads for one answer (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    if mode == "answer" or prompt is None:
        return templates.encode_text(tokenizer, answer)[0].tolist()
    completion = answer if isinstance(prompt, str) else [{"role": "assistant", "content": answer}]
    p, c, _ = templates.encode_prompt_completion(tokenizer, prompt, completion)
    return p.tolist() + c.tolist()


def score_ids(clf: Classifier, seqs: Sequence[Sequence[int]], batch_size: int, batch_sharding) -> np.ndarray:
    """Scores [n] float32 of token sequences, in batches of `batch_size` right-padded to a power-of-two
    width (one compile per width); sequences longer than the model's window keep their last tokens."""
    limit = clf.config.max_position_embeddings
    seqs = [list(s)[-limit:] for s in seqs]
    n = len(seqs)
    lengths = np.asarray([len(s) for s in seqs])
    order = np.argsort(-lengths, kind="stable")
    out = np.zeros(n, np.float32)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        w = width_for(int(lengths[idx].max()) + 1, limit)
        ids, seg = np.zeros((batch_size, w), np.int32), np.zeros((batch_size, w), np.int32)
        for r, j in enumerate(idx):
            ids[r, : len(seqs[j])], seg[r, : len(seqs[j])] = seqs[j], 1
        args = [hosts.to_global(hosts.local_rows(a), batch_sharding) for a in (ids, seg)]
        out[idx] = np.asarray(hosts.gather(clf.fn(clf.params, *args)))[: len(idx)]
    return out


def score_answers(
    clf: Classifier,
    prompts: Sequence[Any],
    answers: Sequence[str],
    *,
    mode: str = "prompt_answer",
    batch_size: int,
    batch_sharding,
) -> np.ndarray:
    """Scores [n] of (prompt, answer) pairs (prompts: strings or message lists)."""
    seqs = [encode(clf.tokenizer, p, a, mode) for p, a in zip(prompts, answers)]
    return score_ids(clf, seqs, batch_size, batch_sharding)


def summary(scores: np.ndarray) -> dict:
    """The per-set metrics of a classifier's scores."""
    s = np.asarray(scores, np.float64)
    return {
        "classifier/mean": float(np.mean(s)) if s.size else None,
        "classifier/sigmoid_mean": float(np.mean(1 / (1 + np.exp(-s)))) if s.size else None,
    }
