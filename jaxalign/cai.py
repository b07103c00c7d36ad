"""Constitutional AI: critique-and-revision data from a policy's own answers.

  python -m jaxalign.cai --out=runs/cai          # the embedded task, on CPU in about a minute
  python -m jaxalign.cai --policy=<hf dir> [--critic=<hf dir>] --constitution=<file.json> \
      --prompts=<file.jsonl> --rounds=2 --out=runs/cai

For each prompt the policy samples an answer. Then, for `--rounds` rounds, a principle is drawn from the
constitution (a seeded draw per prompt and round), the critic is asked for a critique of the current answer
against that principle's critique request, then for a revision (the principle's revision request); the
revision is the answer of the next round. The critic is the policy itself unless `--critic` names another
HF chat model, which then writes the critiques and the revisions. Every conversation goes through the
chat template of the model that answers it:

  critique: [few-shot examples...] + prompt + [assistant: answer, user: critique request]
  revision: ... + [assistant: critique, user: revision request]

Written to `--out`:
  sft.jsonl          {"prompt": [messages], "completion": [assistant: final revision]} (prompt_completion,
                     conversational: `configs/sft.py --config.data.train=<out>/sft.jsonl` reads it)
  preferences.jsonl  {"prompt", "chosen": [assistant: final revision], "rejected": [assistant: first
                     answer]} (the DPO family's and reward models' format); prompts whose final revision
                     is the first answer give no pair (counted).
  critiques.jsonl    the whole trace per prompt: first answer, then principle, critique and revision per
                     round.
  state.json         progress: batches done, the files' sizes after the last complete batch, the settings.

Prompts (`--prompts`): any file `jaxalign.data.read(kind="prompt")` takes (a 'prompt' string or message
list, messages, preference rows' prompts...); a reference 'answer' is carried into the output rows.

Constitution (`--constitution`): the layout of the public CAI recipes, {"constitutions": ..., "system_chat":
[[messages], ...]}, where "constitutions" is a list of {"critic" (or "critique"), "revision"} or an object
{name: {"critique", "revision"}}; "system_chat" (optional) holds few-shot conversations (user asks,
assistant answers, user gives a critique request, assistant critiques, user gives a revision request,
assistant revises). A plain list of {"name", "critique", "revision"} is accepted too. A prompt that does
not fit in the model's max_position_embeddings (with `--max_new_tokens`) leaves out the oldest few-shot
examples, then keeps only its last tokens; a note says so once.

Batching and resuming: prompts go `--batch_size` at a time; each batch is one sampler call for the
answers, then one for the critiques and one for the revisions per round (rows padded to the batch size and
prompt widths to powers of two, so the jitted sampler compiles a few times only). A batch's rows are
appended to each file in one write, then state.json is replaced: an interrupted run, started again with
the same command, cuts the files back to the last complete batch and goes on from there (same seed, same
rows as an uninterrupted run). `--max_batches=N` stops after N batches (a run in pieces).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags, logging

from jaxalign.errors import CheckpointError, DataError, UserError, check_output_dir, one_line

FILES = ("sft.jsonl", "preferences.jsonl", "critiques.jsonl")
STATE = "state.json"
MIN_WIDTH = 128  # prompt widths: powers of two from this (few shapes, few compilations; padding is cheap)


def default_policy() -> str:
    from jaxalign import defaults

    return defaults.asset("checkpoints", "sft")


def default_constitution() -> str:
    from jaxalign import defaults

    return defaults.asset("constitution.json")


def default_prompts() -> str:
    """The decline slice's prompts: password / pin requests to refuse and look-alikes to answer."""
    from jaxalign import defaults

    return defaults.asset("decline_train.jsonl")


# ------------------------------------------------------------------------------------------------------
# The constitution.
# ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # the critique request (a user turn)
    revision: str  # the revision request (a user turn)


@dataclasses.dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    few_shot: tuple[tuple[dict, ...], ...] = ()  # conversations shown before every critique / revision


class _Located(dict):
    """A JSON object that knows where it starts in its file (character offset)."""

    pos = 0


def _json_with_positions(text: str):
    """json.loads, with every object a `_Located` dict carrying its offset."""
    import json.decoder
    import json.scanner

    decoder = json.JSONDecoder()

    def parse_object(s_and_end, *args):
        obj, end = json.decoder.JSONObject(s_and_end, *args)
        located = _Located(obj)
        located.pos = s_and_end[1] - 1
        return located, end

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder.decode(text)


def load_constitution(path: str) -> Constitution:
    """Reads a constitution file (see the module docstring); DataError ``<file> line <N>: ...`` if bad."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file; expected a constitution JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); expected JSON") from None
    try:
        data = _json_with_positions(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: invalid JSON ({e.msg})") from None

    def where(obj, default=None):
        pos = getattr(obj, "pos", None)
        pos = getattr(default, "pos", 0) if pos is None else pos
        return f"{path} line {text.count(chr(10), 0, pos) + 1}"

    expected = (
        'expected {"constitutions": [{"critic": ..., "revision": ...}, ...] or {name: {"critique": ..., '
        '"revision": ...}}, "system_chat": [[messages], ...]}'
    )
    if isinstance(data, list):
        items, few = data, []
    elif isinstance(data, dict) and "constitutions" in data:
        items, few = data["constitutions"], data.get("system_chat", data.get("few_shot", []))
    else:
        got = f"keys {sorted(data)}" if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{where(data)}: no \"constitutions\" ({got}); {expected}")
    if isinstance(items, dict):
        named = [(str(k), v) for k, v in items.items()]
    elif isinstance(items, list):
        named = [
            (str(v.get("name", f"principle {i + 1}")) if isinstance(v, dict) else f"principle {i + 1}", v)
            for i, v in enumerate(items)
        ]
    else:
        raise DataError(f'{where(data)}: "constitutions" must be a list or an object; {expected}')
    if not named:
        raise DataError(f"{where(data)}: the constitution has no principles; {expected}")
    principles = []
    for name, p in named:
        if not isinstance(p, dict):
            raise DataError(f"{where(p, data)}: principle {name!r} must be an object; {expected}")
        critique = p.get("critique", p.get("critic"))
        for key, value in (("critique", critique), ("revision", p.get("revision"))):
            if value is None:
                raise DataError(
                    f'{where(p)}: principle {name!r} has no "{key}"; expected a non-empty string for both '
                    '"critique" (or "critic") and "revision"'
                )
            if not isinstance(value, str) or not value.strip():
                raise DataError(f'{where(p)}: principle {name!r}: "{key}" must be a non-empty string')
        principles.append(Principle(name, critique, p["revision"]))
    if not isinstance(few, list):
        raise DataError(f'{where(data)}: "system_chat" must be a list of conversations (message lists)')
    examples = []
    for i, conversation in enumerate(few):
        if not isinstance(conversation, list) or not conversation:
            raise DataError(
                f'{where(conversation, data)}: "system_chat" item {i + 1} must be a non-empty list of messages'
            )
        for m in conversation:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise DataError(
                    f'{where(m, data)}: "system_chat" item {i + 1}: expected messages {{"role": "user" | '
                    '"assistant" | "system", "content": "..."}'
                )
            if not isinstance(m.get("content"), str):
                raise DataError(f'{where(m)}: "system_chat" item {i + 1}: "content" must be a string')
        examples.append(tuple({"role": m["role"], "content": m["content"]} for m in conversation))
    return Constitution(tuple(principles), tuple(examples))


def draw_principle(constitution: Constitution, seed: int, index: int, round_: int) -> Principle:
    """The principle for prompt `index` in round `round_`: a draw seeded by (seed, index, round), so it does
    not depend on batching or on where a resumed run started."""
    import numpy as np

    k = np.random.default_rng([seed, index, round_]).integers(len(constitution.principles))
    return constitution.principles[int(k)]


# ------------------------------------------------------------------------------------------------------
# Conversations.
# ------------------------------------------------------------------------------------------------------


def as_messages(prompt) -> list[dict]:
    """A prompt (a string: one user turn, or a message list) as a message list."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def critique_messages(
    prompt, answer: str, principle: Principle, few_shot: Sequence[Sequence[dict]] = ()
) -> list[dict]:
    """The conversation the critic continues with its critique: the prompt's system turns, the few-shot
    conversations, the prompt, the answer, the principle's critique request."""
    messages = as_messages(prompt)
    system = [m for m in messages[:1] if m["role"] == "system"]
    shots = [m for conversation in few_shot for m in conversation]
    return [
        *system,
        *shots,
        *messages[len(system) :],
        {"role": "assistant", "content": answer},
        {"role": "user", "content": principle.critique},
    ]


def revision_messages(
    prompt, answer: str, principle: Principle, critique: str, few_shot: Sequence[Sequence[dict]] = ()
) -> list[dict]:
    """The conversation the critic continues with its revision: the critique conversation, the critique,
    the principle's revision request."""
    return [
        *critique_messages(prompt, answer, principle, few_shot),
        {"role": "assistant", "content": critique},
        {"role": "user", "content": principle.revision},
    ]


def fit_conversation(
    encode: Callable[[list[dict]], list[int]],
    build: Callable[[Sequence[Sequence[dict]]], list[dict]],
    few_shot: Sequence[Sequence[dict]],
    budget: int,
) -> tuple[list[int], int, bool]:
    """Token ids of `build(few_shot[k:])` for the smallest k that fits in `budget` tokens: (ids, k = the
    oldest examples left out, cut = True when even with none it did not fit and only its last `budget`
    tokens are kept)."""
    for k in range(len(few_shot) + 1):
        ids = encode(build(few_shot[k:]))
        if len(ids) <= budget:
            return ids, k, False
    return ids[-budget:], len(few_shot), True


def prompt_width(n: int) -> int:
    return max(MIN_WIDTH, 1 << max(n - 1, 0).bit_length())


# ------------------------------------------------------------------------------------------------------
# Models.
# ------------------------------------------------------------------------------------------------------


class Sampler:
    """One HF chat model behind the jitted sampler: message lists in, texts out, `batch_size` rows a call."""

    def __init__(
        self, path: str, *, batch_size: int, max_new_tokens: int, temperature: float, top_p: float, top_k: int
    ):
        from jaxalign import checkpoints, models
        from jaxalign.sampling import eos_ids_of, pad_id_of

        config, self.params = checkpoints.load_hf_model(path)
        self.tokenizer = checkpoints.load_tokenizer(path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise CheckpointError(f"{path}: the tokenizer has no chat template; jaxalign.cai needs one")
        eos = config.eos_token_id
        extra = eos if isinstance(eos, tuple) else (() if eos is None else (eos,))
        try:
            self.eos_ids, self.pad_id = eos_ids_of(self.tokenizer, extra), pad_id_of(self.tokenizer)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
        self.path = path
        self.max_positions = int(config.max_position_embeddings)
        if max_new_tokens >= self.max_positions:
            raise UserError(
                f"--max_new_tokens={max_new_tokens}: must be below {path}'s max_position_embeddings "
                f"({self.max_positions}), leaving room for the prompt"
            )
        self.budget = self.max_positions - max_new_tokens  # prompt tokens at most
        self.batch_size = batch_size
        self.model = models.Transformer(config)
        # sampling.generate: one jitted program per (model config, settings, shapes), cached across
        # Sampler objects (a resumed run in the same process compiles nothing again).
        self.settings = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "eos_ids": self.eos_ids,
            "pad_id": self.pad_id,
        }

    def encode(self, messages: Sequence[dict]) -> list[int]:
        try:
            ids = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=True
            )
        except Exception as e:  # noqa: BLE001 - jinja's TemplateError (e.g. a role the template rejects), ValueError
            raise UserError(f"{self.path}: its chat template cannot render a conversation ({one_line(e)})")
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def sample(self, prompts: Sequence[Sequence[int]], key) -> list[str]:
        """One sampler call: the prompts' token ids (at most batch_size of them) -> stripped texts."""
        import jax

        from jaxalign.sampling import decode_completions, generate, left_pad

        rows = list(prompts) + [[]] * (self.batch_size - len(prompts))  # empty rows start done
        b = left_pad(rows, self.pad_id, length=prompt_width(max(len(p) for p in prompts)))
        out = generate(
            self.model, self.params, b["prompt_ids"], b["prompt_segment_ids"], key, **self.settings
        )
        out = jax.device_get(out)
        return [t.strip() for t in decode_completions(self.tokenizer, out)[: len(prompts)]]


# ------------------------------------------------------------------------------------------------------
# The run.
# ------------------------------------------------------------------------------------------------------


def _append(path: str, rows: Sequence[dict]) -> int:
    """Appends `rows` to `path` in one write; returns the file's new size."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def _write_state(out_dir: str, state: dict) -> None:
    tmp = os.path.join(out_dir, STATE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out_dir, STATE))


def _read_run(out_dir: str, settings: dict) -> dict | None:
    """The state of the run in `out_dir` (None: a new run); UserError when it holds another run or
    something else. Writes nothing."""
    check_output_dir("--out", out_dir)
    state_path = os.path.join(out_dir, STATE)
    if not os.path.isfile(state_path):
        found = [name for name in FILES if os.path.exists(os.path.join(out_dir, name))]
        if found:
            raise UserError(
                f"--out={out_dir}: has {found[0]} but no {STATE} (not a jaxalign.cai run); give another --out"
            )
        return None
    try:
        with open(state_path) as f:
            state = json.load(f)
        sizes = {name: int(state["sizes"][name]) for name in FILES}
        int(state["batches_done"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{state_path}: not a jaxalign.cai state file; give another --out") from None
    if state.get("settings") != settings:
        old = state.get("settings") or {}
        diff = [f"{k}={old.get(k)!r} there, {v!r} now" for k, v in settings.items() if old.get(k) != v]
        raise UserError(
            f"--out={out_dir}: holds a run with other settings ({'; '.join(diff)}); rerun with its "
            "settings to resume it, or give another --out"
        )
    for name, size in sizes.items():
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path) or os.path.getsize(path) < size:
            raise UserError(f"{path}: shorter than {STATE} says ({size} bytes); give another --out")
    return state


def _start_run(out_dir: str, settings: dict, state: dict | None) -> dict:
    """`state` with the files cut back to its last complete batch (a batch that was being written when
    the run stopped), or a new run's state and empty files."""
    if state is not None:
        for name, size in state["sizes"].items():
            os.truncate(os.path.join(out_dir, name), size)
        return state
    os.makedirs(out_dir, exist_ok=True)
    for name in FILES:
        open(os.path.join(out_dir, name), "wb").close()
    state = {
        "settings": settings,
        "batches_done": 0,
        "prompts_done": 0,
        "sizes": {name: 0 for name in FILES},
        "stats": {
            "sft_rows": 0,
            "preference_pairs": 0,
            "skipped_equal": 0,
            "skipped_empty": 0,
            "empty_revisions": 0,
            "few_shot_left_out": 0,
            "prompts_cut": 0,
        },
    }
    _write_state(out_dir, state)
    return state


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def run_cai(
    out_dir: str,
    *,
    policy: str = "",
    critic: str = "",
    constitution: str = "",
    prompts: str = "",
    rounds: int = 1,
    max_prompts: int = 0,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    temperature: float = 0.7,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    max_batches: int = 0,
    log: Callable[[str], Any] = lambda text: print(text, flush=True),
    note: Callable[[str], Any] = lambda text: print(text, file=sys.stderr, flush=True),
) -> dict:
    """Runs (or resumes) a critique-and-revision run into `out_dir` (see the module docstring); returns its
    stats. Empty paths are the embedded defaults."""
    import jax

    from jaxalign import data

    policy = policy or default_policy()
    critic = critic or policy
    constitution = constitution or default_constitution()
    prompts = prompts or default_prompts()
    for name, value, low in (
        ("rounds", rounds, 1),
        ("batch_size", batch_size, 1),
        ("max_new_tokens", max_new_tokens, 1),
        ("max_prompts", max_prompts, 0),
        ("max_batches", max_batches, 0),
    ):
        if value < low:
            raise UserError(f"--{name}={value}: must be >= {low}")
    if temperature < 0:
        raise UserError(f"--temperature={temperature}: must be >= 0 (0 = greedy)")
    if not 0 < top_p <= 1:
        raise UserError(f"--top_p={top_p}: must be in (0, 1] (1 = off)")
    if top_k < 0:
        raise UserError(f"--top_k={top_k}: must be >= 0 (0 = off)")
    for flag, path in (("policy", policy), ("critic", critic)):
        if not os.path.isdir(path):
            raise UserError(f"--{flag}={path}: no such directory; expected a HF model directory")

    # Everything the user gave is checked before a model is loaded or a file written.
    const = load_constitution(constitution)
    rows = data.read(prompts, kind="prompt")
    examples = [rows[i] for i in range(len(rows))]
    if max_prompts:
        examples = examples[:max_prompts]

    settings = {
        "policy": os.path.abspath(policy),
        "critic": os.path.abspath(critic),
        "constitution": os.path.abspath(constitution),
        "prompts": os.path.abspath(prompts),
        "num_prompts": len(examples),
        "rounds": rounds,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
    }
    total = -(-len(examples) // batch_size)
    state = _read_run(out_dir, settings)
    if state is not None and state["batches_done"] >= total:
        log(f"[cai] {out_dir}: already complete ({len(examples)} prompts); nothing to do")
        return {
            "prompts": len(examples),
            "prompts_done": state["prompts_done"],
            "complete": True,
            **state["stats"],
        }

    logging.set_verbosity(logging.WARNING)
    settings_kw = {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
    }
    pol = Sampler(policy, **settings_kw)
    crit = pol if os.path.abspath(critic) == os.path.abspath(policy) else Sampler(critic, **settings_kw)

    state = _start_run(out_dir, settings, state)
    stats = state["stats"]
    start_batch = state["batches_done"]
    if start_batch:
        log(
            f"[cai] resuming {out_dir} at batch {start_batch + 1}/{total} ({state['prompts_done']} prompts done)"
        )
    told = set()

    def fitted(sampler, build, few):
        ids, left_out, cut = fit_conversation(sampler.encode, build, few, sampler.budget)
        stats["few_shot_left_out"] += left_out
        stats["prompts_cut"] += cut
        for flag, what in ((left_out, "few_shot"), (cut, "cut")):
            if flag and (sampler.path, what) not in told:
                told.add((sampler.path, what))
                note(
                    f"note: {sampler.path}: a prompt does not fit in max_position_embeddings="
                    f"{sampler.max_positions} with --max_new_tokens={max_new_tokens}: "
                    + (
                        "the oldest few-shot examples are left out where needed (said once)"
                        if what == "few_shot"
                        else "only its last tokens are kept where needed (said once)"
                    )
                )
        return ids

    base_key = jax.random.key(seed)
    t0, done_here, first_batch = time.time(), 0, 0.0
    for bi in range(start_batch, total):
        if max_batches and done_here >= max_batches:
            log(f"[cai] stopped after {done_here} batches (--max_batches); run the same command to go on")
            break
        first = bi * batch_size
        chunk = examples[first : first + batch_size]
        key = jax.random.fold_in(base_key, bi)
        msgs = [as_messages(ex["prompt"]) for ex in chunk]
        answers = pol.sample([fitted(pol, lambda few, m=m: m, ()) for m in msgs], jax.random.fold_in(key, 0))
        current, trace = list(answers), [[] for _ in chunk]
        for r in range(rounds):
            principles = [draw_principle(const, seed, first + i, r) for i in range(len(chunk))]
            critiques = crit.sample(
                [
                    fitted(crit, lambda few, m=m, a=a, p=p: critique_messages(m, a, p, few), const.few_shot)
                    for m, a, p in zip(msgs, current, principles)
                ],
                jax.random.fold_in(key, 2 * r + 1),
            )
            revisions = crit.sample(
                [
                    fitted(
                        crit,
                        lambda few, m=m, a=a, p=p, c=c: revision_messages(m, a, p, c, few),
                        const.few_shot,
                    )
                    for m, a, p, c in zip(msgs, current, principles, critiques)
                ],
                jax.random.fold_in(key, 2 * r + 2),
            )
            for i, (p, c, v) in enumerate(zip(principles, critiques, revisions)):
                trace[i].append({"principle": p.name, "critique": c, "revision": v})
                if v:
                    current[i] = v
                else:  # nothing to revise with: the answer stays
                    stats["empty_revisions"] += 1
        sft, prefs, traces = [], [], []
        for i, (ex, m) in enumerate(zip(chunk, msgs)):
            extra = {"answer": ex["answer"]} if ex.get("answer") is not None else {}
            final = current[i]
            traces.append(
                {
                    "index": first + i,
                    "prompt": m,
                    "first_answer": answers[i],
                    "rounds": trace[i],
                    "final": final,
                }
            )
            if not final:
                stats["skipped_empty"] += 1
                continue
            sft.append({"prompt": m, "completion": [{"role": "assistant", "content": final}], **extra})
            if final == answers[i] or not answers[i]:
                stats["skipped_equal"] += 1
                continue
            prefs.append(
                {
                    "prompt": m,
                    "chosen": [{"role": "assistant", "content": final}],
                    "rejected": [{"role": "assistant", "content": answers[i]}],
                    **extra,
                }
            )
        sizes = {
            name: _append(os.path.join(out_dir, name), part)
            for name, part in zip(FILES, (sft, prefs, traces))
        }
        stats["sft_rows"] += len(sft)
        stats["preference_pairs"] += len(prefs)
        state.update(batches_done=bi + 1, prompts_done=first + len(chunk), sizes=sizes, stats=stats)
        _write_state(out_dir, state)
        done_here += 1
        elapsed = time.time() - t0
        if done_here == 1:
            first_batch = elapsed  # includes the sampler's compilation: the ETA leaves it out after
        per_batch = (elapsed - first_batch) / (done_here - 1) if done_here > 1 else elapsed
        eta = per_batch * (total - bi - 1)
        log(
            f"[cai] batch {bi + 1}/{total}: {first + len(chunk)}/{len(examples)} prompts, "
            f"{stats['preference_pairs']} pairs, {stats['skipped_equal']} unrevised, "
            f"{_duration(elapsed)} elapsed, ETA {_duration(eta)}"
        )
    complete = state["batches_done"] >= total
    return {"prompts": len(examples), "prompts_done": state["prompts_done"], "complete": complete, **stats}


# ------------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------------


def _define_flags():
    """absl flags of the CLI, defined only when run as a program (so importing never clashes)."""
    global _FLAGS
    _FLAGS = {
        "out": flags.DEFINE_string(
            "out", None, "Output directory (sft.jsonl, preferences.jsonl, critiques.jsonl)."
        ),
        "policy": flags.DEFINE_string(
            "policy", "", "HF chat model directory that answers (default: the embedded SFT checkpoint)."
        ),
        "critic": flags.DEFINE_string(
            "critic", "", "HF chat model directory that critiques and revises (default: the policy)."
        ),
        "constitution": flags.DEFINE_string(
            "constitution",
            "",
            "Constitution JSON (default: the embedded task's jaxalign/assets/embedded/...).",
        ),
        "prompts": flags.DEFINE_string(
            "prompts", "", "Prompts file (default: the embedded decline slice's train prompts)."
        ),
        "rounds": flags.DEFINE_integer("rounds", 1, "Critique-and-revision rounds per prompt."),
        "max_prompts": flags.DEFINE_integer("max_prompts", 0, "Use only the first N prompts (0 = all)."),
        "batch_size": flags.DEFINE_integer("batch_size", 32, "Prompts per sampler call."),
        "max_new_tokens": flags.DEFINE_integer(
            "max_new_tokens", 24, "Tokens per answer, critique, revision."
        ),
        "temperature": flags.DEFINE_float("temperature", 0.7, "Sampling temperature (0 = greedy)."),
        "top_p": flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1] (1 = off)."),
        "top_k": flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off)."),
        "seed": flags.DEFINE_integer("seed", 0, "Seed of the sampling and of the principles drawn."),
        "max_batches": flags.DEFINE_integer(
            "max_batches", 0, "Stop after N batches (0 = run to the end); rerun to go on."
        ),
    }


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    values = {name: flag.value for name, flag in _FLAGS.items()}
    stats = run_cai(values.pop("out"), **values)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["out"])
    from jaxalign.errors import run_main

    run_main(
        main
    )  # bad flags, files, checkpoints: `error: <one line>`, exit code 2 (--verbosity=1: traceback)
