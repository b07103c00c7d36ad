"""Reward-model-labelled synthetic preference pairs: sample n completions per prompt, score, keep best/worst.

  python -m jaxalign.synthesize --policy=jaxalign/assets/embedded/checkpoints/sft \
      --reward_model=jaxalign/assets/embedded/checkpoints/reward \
      --prompts=jaxalign/assets/embedded/prompts_train.jsonl --n=4 --out=runs/synthetic/pairs.jsonl

Writes rows in the conversational preference format the DPO trainer reads ({"prompt": [messages],
"chosen": [assistant message], "rejected": [assistant message]}), so an iterative/online DPO round is
`--config.data.train=runs/synthetic/pairs.jsonl`. Scores come from a trained reward model (a
`*ForSequenceClassification` checkpoint read at the last token of prompt + completion) or, with
`--reward_fn=module:function`, from a checkable reward `f(prompt_row, completion_text) -> float`.
Prompts whose n samples all score the same give no pair and are skipped. The file is written to a
temporary name and renamed at the end, so an interrupted run leaves no half-written file.
"""

import json
import os

import jax
import numpy as np
from absl import flags, logging

from jaxalign import checkpoints, models
from jaxalign.errors import DataError, UserError
from jaxalign.plugins import resolve_fn
from jaxalign.sampling import make_generate_fn, prompts as prompt_lib


# Scores closer than this (relative to the larger, absolute below 1) are a tie: no pair.
TIE_TOLERANCE = 1e-5


def load_prompt_rows(path):
    rows = []
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file; expected a jsonl file with a 'prompt' per row")
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start}); expected jsonl") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise DataError(f"{path} line {i}: 'prompt' is missing; expected an object with a 'prompt'")
        rows.append(row)
    return rows


def resolve(name):
    """'package.module:function' -> the function (UserError naming what is wrong)."""
    try:
        return resolve_fn(name)
    except ValueError as e:
        raise UserError(f"--reward_fn={e}") from e


def make_rm_scorer(rm_dir):
    """Returns score(prompt_ids [B,P] left-padded, prompt_seg, tokens [B,N], mask [B,N]) -> [B] numpy:
    the reward model's score at the last real token of prompt + completion (eval.scoring's scorer)."""
    from jaxalign.eval.scoring import make_reward_fn

    mcfg, rm_params = checkpoints.load_hf_model(rm_dir, head="score")
    score = make_reward_fn(models.ScalarHeadModel(mcfg))
    return lambda *a: np.asarray(score(rm_params, *a))


def synthesize_pairs(
    policy,
    prompts_path,
    out_path,
    *,
    n=4,
    reward_model="",
    reward_fn="",
    max_new_tokens=32,
    temperature=1.0,
    top_p=1.0,
    batch_size=64,
    max_prompt_length=48,
    seed=0,
    limit=0,
):
    """Samples `n` completions per prompt from `policy` and writes (best, worst) pairs. Returns stats."""
    if bool(reward_model) == bool(reward_fn):
        raise UserError(
            "give exactly one of reward_model (a checkpoint directory) or reward_fn (module:function)"
        )
    if reward_model and checkpoints.hf.is_reward_checkpoint(reward_model) is False:
        raise UserError(
            f"--reward_model={reward_model}: a causal-LM checkpoint, not a reward model "
            "(*ForSequenceClassification with a score head); its scores would be noise"
        )
    rows = load_prompt_rows(prompts_path)
    if limit:
        rows = rows[:limit]
    tokenizer = checkpoints.load_tokenizer(policy)
    mcfg, params = checkpoints.load_hf_model(policy)
    gen = make_generate_fn(
        models.Transformer(mcfg),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        eos_ids=prompt_lib.eos_ids_of(tokenizer),
        pad_id=prompt_lib.pad_id_of(tokenizer),
    )
    rm_score = make_rm_scorer(reward_model) if reward_model else None
    fn = resolve(reward_fn) if reward_fn else None

    rng = jax.random.key(seed)
    per_call = max(batch_size // n, 1)
    pairs, skipped, all_scores = [], 0, []
    for start in range(0, len(rows), per_call):
        chunk = rows[start : start + per_call]
        expanded = [r for r in chunk for _ in range(n)]  # n copies of each prompt, adjacent
        b = prompt_lib.build_prompt_batch(
            tokenizer, [r["prompt"] for r in expanded], max_length=max_prompt_length
        )
        rng, key = jax.random.split(rng)
        out = gen(params, b["prompt_ids"], b["prompt_segment_ids"], key)
        texts = prompt_lib.decode_completions(tokenizer, out, skip_special_tokens=True)
        if rm_score is not None:
            scores = rm_score(
                b["prompt_ids"], b["prompt_segment_ids"], np.asarray(out.tokens), np.asarray(out.mask)
            )
        else:
            raw = prompt_lib.decode_completions(tokenizer, out, skip_special_tokens=False)
            scores = np.array([fn(r, t) for r, t in zip(expanded, raw)], np.float32)
        all_scores.extend(scores.tolist())
        for i, row in enumerate(chunk):
            s = scores[i * n : (i + 1) * n]
            best, worst = int(np.argmax(s)), int(np.argmin(s))
            # A tie: equal scores, up to the rounding that can tell apart the scores of token-identical samples
            # in different rows (a reward model's scores are floats from a batched forward pass).
            if s[best] - s[worst] <= TIE_TOLERANCE * max(1.0, abs(float(s[best]))):
                skipped += 1
                continue
            pairs.append(
                {
                    "prompt": row["prompt"],
                    "chosen": [{"role": "assistant", "content": texts[i * n + best].strip()}],
                    "rejected": [{"role": "assistant", "content": texts[i * n + worst].strip()}],
                    "score_chosen": float(s[best]),
                    "score_rejected": float(s[worst]),
                    **({"answer": row["answer"]} if "answer" in row else {}),
                }
            )
        print(
            f"[synthesize] {min(start + per_call, len(rows))}/{len(rows)} prompts, {len(pairs)} pairs",
            flush=True,
        )
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    os.replace(tmp, out_path)
    return {
        "prompts": len(rows),
        "pairs": len(pairs),
        "skipped_ties": skipped,
        "mean_score": float(np.mean(all_scores)) if all_scores else 0.0,
    }


def _define_flags():
    """absl flags of the CLI, defined only when run as a program (so importing never clashes)."""
    global _POLICY, _PROMPTS, _OUT, _N, _RM, _RFN, _MAX_NEW, _TEMP, _LIMIT, _SEED
    _POLICY = flags.DEFINE_string("policy", None, "HF checkpoint directory of the sampling policy.")
    _PROMPTS = flags.DEFINE_string("prompts", None, "jsonl with a 'prompt' (string or messages) per row.")
    _OUT = flags.DEFINE_string("out", None, "Output jsonl of preference pairs.")
    _N = flags.DEFINE_integer("n", 4, "Samples per prompt.")
    _RM = flags.DEFINE_string("reward_model", "", "Reward model checkpoint directory.")
    _RFN = flags.DEFINE_string("reward_fn", "", "Or a reward function 'module:function'.")
    _MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "Tokens per completion at most.")
    _TEMP = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
    _LIMIT = flags.DEFINE_integer("limit", 0, "Use only the first N prompts (0 = all).")
    _SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    stats = synthesize_pairs(
        _POLICY.value,
        _PROMPTS.value,
        _OUT.value,
        n=_N.value,
        reward_model=_RM.value,
        reward_fn=_RFN.value,
        max_new_tokens=_MAX_NEW.value,
        temperature=_TEMP.value,
        seed=_SEED.value,
        limit=_LIMIT.value,
    )
    print(json.dumps(stats))


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["policy", "prompts", "out"])
    from jaxalign.errors import run_main

    run_main(
        main
    )  # bad flags, prompts, checkpoints: `error: <one line>`, exit code 2 (--verbosity=1: traceback)
