"""Chat with one or more models side by side: every model answers the same turn.

  python -m jaxalign.chat --checkpoint=runs/sft/hf,runs/dpo/hf --names=sft,dpo --temperature=0.7
  printf 'what is 2 plus 3?\\nand 4 times 2?\\n' | python -m jaxalign.chat --checkpoint=a,b

`--checkpoint` (comma-separated and/or repeated; default: the shipped embedded SFT checkpoint) takes
Hugging Face model directories, e.g. a training run's export; each model uses its own tokenizer and chat
template. User turns are read from stdin, one per line (a `you>` prompt when stdin is a terminal; piped
input works the same, and each turn is echoed as `>>> <turn>`). EOF or `/quit` ends the chat.

Conversation: each model keeps ITS OWN history: its prompt for turn k holds the k-1 earlier user turns
and that model's own answers to them, so two models' conversations diverge as their answers do.
`--shared_history=<name>` makes every model continue from <name>'s answers instead (one conversation,
several models proposing the next answer). When a model's prompt plus `max_new_tokens` no longer fits in
its `max_position_embeddings`, the oldest turns are left out of that model's prompt (a note says so once
per model); the conversation itself is kept.

Commands: `/reset` clears the conversation; `/set temperature=0.7 top_p=0.9` changes sampling settings
(temperature, top_p, top_k, max_new_tokens, seed; `/set` alone shows them); `/help`; `/quit`.

Output: when stdout is a terminal wide enough for all of them (`--layout=auto`), the answers are shown
side by side in columns, once every model has answered; otherwise one after another under
`--- <name>` headers, each printed as soon as that model is done.

Streaming granularity: per model, not per token. The sampler (`sampling.generate`) is one jitted program
(prefill + an XLA while loop) that returns all tokens at the end, and its KV cache is not exposed across
calls, so token-by-token output would mean re-running the prefill for every chunk. All models' sampling
programs are dispatched at once (JAX runs them asynchronously) and each answer is printed when its
model finishes.

Sampling: `--temperature=0` (the default) is greedy. Turn k of a conversation samples with
`fold_in(key(seed), k)` for every model, so equal models with equal settings give equal answers, and a
`/reset` replays the same draws.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import sys
import textwrap
from collections.abc import Iterator, Sequence
from typing import Any

from absl import app, flags

from jaxalign.errors import CheckpointError, UserError, one_line


def default_checkpoint() -> str:
    """The shipped SFT checkpoint of the embedded task (jaxalign/assets/embedded/checkpoints/sft)."""
    from jaxalign import defaults

    return defaults.asset("checkpoints", "sft")


def define_flags():
    """The command line's flags (defined when run as a program, so that importing this module for its
    functions defines nothing on absl's global flags)."""
    flags.DEFINE_multi_string(
        "checkpoint",
        None,
        "HF model directory (config.json, safetensors, tokenizer with a chat template); comma-separated "
        "and/or repeated to compare several. Default: the shipped embedded SFT checkpoint.",
    )
    flags.DEFINE_string(
        "names", "", "Comma-separated display names, one per checkpoint (default: from the directory names)."
    )
    flags.DEFINE_string("system", "", "A system message put first in every model's conversation.")
    flags.DEFINE_string(
        "shared_history",
        "",
        "Name of the model whose answers make the conversation every model continues. Default (empty): each "
        "model keeps its own history of its own answers.",
    )
    flags.DEFINE_integer("max_new_tokens", 64, "Tokens generated at most per answer.")
    flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 = greedy.")
    flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1] (1 = off).")
    flags.DEFINE_integer("seed", 0, "PRNG seed (turn k samples with fold_in(key(seed), k)).")
    flags.DEFINE_multi_string("stop", [], "Stop string(s), in addition to the EOS token.")
    flags.DEFINE_enum(
        "layout",
        "auto",
        ["auto", "columns", "rows"],
        "columns: answers side by side; rows: one after another; auto: columns when stdout is a terminal "
        "wide enough.",
    )
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")


MIN_COLUMN = 24  # characters: narrower terminals get rows
_SEPARATOR = " │ "
_MIN_PROMPT = 32  # prompts are left-padded to a power of two from this: few shapes, few compilations


# ------------------------------------------------------------------------------------------------------
# Sampling settings.
# ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    """The sampling settings `/set` changes."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    seed: int = 0

    def check(self, prefix: str = "") -> None:
        """Raises UserError (``<prefix><name>=<value>: <why>``) for a value the sampler does not take."""
        why = {
            "temperature": self.temperature < 0 and "must be >= 0 (0 = greedy)",
            "top_p": not 0.0 < self.top_p <= 1.0 and "must be in (0, 1] (1 = off)",
            "top_k": self.top_k < 0 and "must be >= 0 (0 = off)",
            "max_new_tokens": self.max_new_tokens < 1 and "must be >= 1",
        }
        for name, problem in why.items():
            if problem:
                raise UserError(f"{prefix}{name}={getattr(self, name)}: {problem}")

    def updated(self, assignment: str) -> Settings:
        """A copy with one ``name=value`` applied (raises UserError naming it when it is bad)."""
        name, eq, value = assignment.partition("=")
        name = name.strip().lstrip("-")
        fields = {f.name: f for f in dataclasses.fields(self)}
        if not eq or name not in fields:
            raise UserError(f"{assignment}: expected name=value with name one of {', '.join(fields)}")
        kind = float if fields[name].type in ("float", float) else int
        try:
            parsed = kind(value.strip())
        except ValueError:
            raise UserError(
                f"{name}={value.strip()}: expected {'a number' if kind is float else 'an integer'}"
            )
        new = dataclasses.replace(self, **{name: parsed})
        try:
            new.check()
        except UserError as e:  # the value as the user wrote it
            raise UserError(f"{name}={value.strip()}: {str(e).partition(': ')[2]}") from None
        return new

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items())


# ------------------------------------------------------------------------------------------------------
# Models and prompts.
# ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ChatModel:
    """One checkpoint, ready to answer: its model, params, tokenizer and special ids."""

    name: str
    path: str
    model: Any  # models.Transformer
    params: Any
    tokenizer: Any
    eos_ids: tuple[int, ...]
    pad_id: int
    max_positions: int  # prompt + new tokens must fit in this many positions

    @classmethod
    def load(cls, path: str, name: str = "", dtype: str = "float32") -> ChatModel:
        """Loads a HF model directory; CheckpointError (``<path>: ...``) when it is not a usable chat model."""
        from jaxalign import models, sampling
        from jaxalign.checkpoints import load_hf_model, load_tokenizer

        config, params = load_hf_model(path, dtype=dtype)
        tokenizer = load_tokenizer(path)
        if not getattr(tokenizer, "chat_template", None):
            raise CheckpointError(
                f"{path}: the tokenizer has no chat template (chat_template.jinja, or chat_template in "
                "tokenizer_config.json); jaxalign.chat needs one to build conversations"
            )
        eos = config.eos_token_id
        extra = eos if isinstance(eos, tuple) else (() if eos is None else (eos,))
        try:
            eos_ids, pad_id = sampling.eos_ids_of(tokenizer, extra), sampling.pad_id_of(tokenizer)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
        return cls(
            name=name or os.path.basename(os.path.normpath(path)),
            path=path,
            model=models.Transformer(config),
            params=params,
            tokenizer=tokenizer,
            eos_ids=eos_ids,
            pad_id=pad_id,
            max_positions=int(config.max_position_embeddings),
        )

    def encode(self, messages: Sequence[dict]) -> list[int]:
        """The chat template applied to `messages`, with the generation prompt, as token ids."""
        try:
            ids = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=True
            )
        except Exception as e:  # jinja's TemplateError (e.g. a role the template rejects), ValueError
            raise UserError(
                f"{self.name}: its chat template cannot render the conversation ({one_line(e)})"
            ) from e
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]


def default_names(paths: Sequence[str]) -> list[str]:
    """Display names: each directory's shortest path suffix that no other directory shares (`#2`, `#3`
    for a directory given again)."""
    full = [os.path.normpath(os.path.abspath(p)).split(os.sep) for p in paths]
    names, seen = [], {}
    for parts in full:
        others = [q for q in full if q != parts]
        k = next((k for k in range(1, len(parts)) if all(q[-k:] != parts[-k:] for q in others)), len(parts))
        name = "/".join(x for x in parts[-k:] if x)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


@dataclasses.dataclass
class Turn:
    user: str
    answers: dict[str, str]  # model name -> its answer


def conversation_messages(
    turns: Sequence[Turn], user: str, name: str, *, system: str = "", shared_history: str = ""
) -> list[dict]:
    """Model `name`'s conversation for the next turn: the system message, every earlier user turn with
    `name`'s own answer (or `shared_history`'s), then `user`."""
    source = shared_history or name
    messages = [{"role": "system", "content": system}] if system else []
    for t in turns:
        messages.append({"role": "user", "content": t.user})
        messages.append({"role": "assistant", "content": t.answers[source]})
    messages.append({"role": "user", "content": user})
    return messages


def fit_prompt(encode, messages: Sequence[dict], budget: int) -> tuple[list[int], int]:
    """Token ids of `messages` within `budget` tokens: (ids, number of earlier turns left out).

    Leaves out whole (user, assistant) turns, oldest first, keeping the system message and the last user
    turn; if that last turn alone is too long, keeps its last `budget` tokens (the generation prompt's end).
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    body = list(messages[len(system) :])
    dropped = 0
    while True:
        ids = encode(system + body)
        if len(ids) <= budget or len(body) <= 1:
            return ids[-budget:], dropped
        body = body[2:]
        dropped += 1


# ------------------------------------------------------------------------------------------------------
# The conversation.
# ------------------------------------------------------------------------------------------------------


def padded_length(n: int) -> int:
    """The prompt width for n tokens: the next power of two from _MIN_PROMPT (positions count real tokens
    only, so padding costs cache slots, not positions; a growing conversation compiles log-many times)."""
    return max(_MIN_PROMPT, 1 << max(n - 1, 0).bit_length())


class Chat:
    """Several models in one conversation (see the module docstring)."""

    def __init__(
        self,
        models: Sequence[ChatModel],
        settings: Settings | None = None,
        *,
        system: str = "",
        shared_history: str = "",
        stop: Sequence[str] = (),
        notify=None,
    ):
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise UserError(f"--names={','.join(names)}: names must be distinct")
        if shared_history and shared_history not in names:
            raise UserError(
                f"--shared_history={shared_history}: no model of that name; names: {', '.join(names)}"
            )
        self.models = list(models)
        self.settings = settings or Settings()
        self.system = system
        self.shared_history = shared_history
        self.stop = tuple(stop)
        self.turns: list[Turn] = []
        self.notify = notify or (lambda text: print(text, file=sys.stderr, flush=True))
        self._told: set[str] = set()  # models whose prompts were truncated (told once)
        self.check_settings(self.settings, prefix="--")
        for m in self.models:  # a template that rejects the system message: say so now, not mid-chat
            m.encode(conversation_messages([], "hi", m.name, system=system))

    def check_settings(self, settings: Settings, prefix: str = "") -> None:
        settings.check(prefix)
        for m in self.models:
            if settings.max_new_tokens >= m.max_positions:
                raise UserError(
                    f"{prefix}max_new_tokens={settings.max_new_tokens}: must be below {m.name}'s "
                    f"max_position_embeddings ({m.max_positions}), leaving room for the prompt"
                )

    def set(self, assignment: str) -> None:
        new = self.settings.updated(assignment)
        self.check_settings(new)
        self.settings = new

    def reset(self) -> None:
        self.turns = []

    def messages(self, model: ChatModel, user: str) -> list[dict]:
        return conversation_messages(
            self.turns, user, model.name, system=self.system, shared_history=self.shared_history
        )

    def prompt_ids(self, model: ChatModel, user: str) -> tuple[list[int], int]:
        """`model`'s prompt for the next turn `user`: (token ids, earlier turns left out to fit)."""
        budget = model.max_positions - self.settings.max_new_tokens
        return fit_prompt(model.encode, self.messages(model, user), budget)

    def prompts(self, user: str) -> list[list[int]]:
        """Every model's prompt ids for the next turn `user`; the first time some model's prompt had to
        leave out old turns, a note names it (once per model)."""
        fitted = [self.prompt_ids(m, user) for m in self.models]
        cut = [m.name for m, (_, dropped) in zip(self.models, fitted) if dropped and m.name not in self._told]
        if cut:
            self._told.update(cut)
            self.notify(
                f"note: the conversation no longer fits in {', '.join(cut)}'s max_position_embeddings "
                f"with max_new_tokens={self.settings.max_new_tokens}: the oldest turns are left out of "
                "its prompt from now on (said once)"
            )
        return [ids for ids, _ in fitted]

    def answers(self, user: str) -> Iterator[tuple[str, str]]:
        """Every model's answer to `user` as (name, text), each yielded as soon as it is ready; the turn
        is added to the conversation once all have answered."""
        import jax

        from jaxalign import sampling

        s = self.settings
        rng = jax.random.fold_in(jax.random.key(s.seed), len(self.turns))
        pending = []
        for m, ids in zip(self.models, self.prompts(user)):  # dispatch all (asynchronous), then wait for each
            batch = sampling.left_pad([ids], m.pad_id, length=padded_length(len(ids)))
            out = sampling.generate(
                m.model,
                m.params,
                batch["prompt_ids"],
                batch["prompt_segment_ids"],
                rng,
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                eos_ids=m.eos_ids,
                pad_id=m.pad_id,
                stop_sequences=sampling.encode_stop_strings(m.tokenizer, self.stop),
            )
            pending.append((m, out))
        answers = {}
        for m, out in pending:
            text = sampling.decode_completions(m.tokenizer, jax.device_get(out), stop_strings=self.stop)[0]
            answers[m.name] = text.strip()
            yield m.name, answers[m.name]
        self.turns.append(Turn(user, answers))


# ------------------------------------------------------------------------------------------------------
# Terminal output.
# ------------------------------------------------------------------------------------------------------


def columns(answers: Sequence[tuple[str, str]], width: int) -> str:
    """Answers side by side: one column per model, `width` characters in all."""
    n = len(answers)
    col = max(1, (width - len(_SEPARATOR) * (n - 1)) // n)

    def wrap(text):
        lines = [w for para in text.splitlines() or [""] for w in (textwrap.wrap(para, col) or [""])]
        return lines

    blocks = [[name[:col], "─" * min(col, max(len(name), 1)), *wrap(text)] for name, text in answers]
    rows = itertools.zip_longest(*blocks, fillvalue="")
    return "\n".join(_SEPARATOR.join(cell.ljust(col) for cell in row).rstrip() for row in rows)


def use_columns(layout: str, n: int, stream=None) -> tuple[bool, int]:
    stream = stream or sys.stdout
    width = shutil.get_terminal_size((100, 24)).columns
    fits = n > 1 and width >= n * MIN_COLUMN + len(_SEPARATOR) * (n - 1)
    if layout == "columns":
        return True, max(width, n * MIN_COLUMN + len(_SEPARATOR) * (n - 1))
    if layout == "rows":
        return False, width
    return fits and stream.isatty(), width


HELP = """commands:
  /reset                 clear the conversation
  /set name=value ...    change sampling: temperature, top_p, top_k, max_new_tokens, seed (/set: show)
  /help                  this text
  /quit                  leave (or EOF)"""


def read_turns(stream) -> Iterator[str]:
    """Lines of `stream` (with a `you> ` prompt when it is a terminal), until EOF."""
    interactive = stream.isatty()
    if interactive:
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
    while True:
        if interactive:
            try:
                line = input("you> ")
            except EOFError:
                print()
                return
        else:
            line = stream.readline()
            if not line:
                return
        yield line.rstrip("\r\n")


def run(chat: Chat, stream, layout: str = "auto") -> None:
    """The chat loop: reads turns and commands from `stream`, prints answers on stdout."""
    echo = not stream.isatty()
    for line in read_turns(stream):
        text = line.strip()
        if not text:
            continue
        if echo:
            print(f">>> {text}", flush=True)
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command in ("/quit", "/exit"):
                return
            if command == "/reset":
                chat.reset()
                print("(conversation cleared)", flush=True)
            elif command == "/set":
                try:
                    for assignment in rest.split():
                        chat.set(assignment)
                except UserError as e:
                    print(f"error: /set {one_line(e)}", file=sys.stderr, flush=True)
                print(f"({chat.settings.describe()})", flush=True)
            elif command == "/help":
                print(HELP, flush=True)
            else:
                print(f"error: unknown command {command}; /help lists them", file=sys.stderr, flush=True)
            continue
        side_by_side, width = use_columns(layout, len(chat.models))
        if side_by_side:
            done = []
            for name, answer in chat.answers(text):
                done.append((name, answer))
            print(columns(done, width), flush=True)
        else:
            for name, answer in chat.answers(text):
                print(f"--- {name}\n{answer}", flush=True)
        print(flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    paths = [c for arg in (flags.FLAGS.checkpoint or [default_checkpoint()]) for c in arg.split(",") if c]
    if not paths:
        raise UserError("--checkpoint: no checkpoint directory given")
    names = [n.strip() for n in flags.FLAGS.names.split(",")] if flags.FLAGS.names else default_names(paths)
    if len(names) != len(paths) or not all(names):
        raise UserError(
            f"--names={flags.FLAGS.names}: expected {len(paths)} non-empty names, one per checkpoint"
        )
    settings = Settings(
        temperature=flags.FLAGS.temperature,
        top_p=flags.FLAGS.top_p,
        top_k=flags.FLAGS.top_k,
        max_new_tokens=flags.FLAGS.max_new_tokens,
        seed=flags.FLAGS.seed,
    )
    settings.check(prefix="--")
    loaded = [ChatModel.load(p, n, dtype=flags.FLAGS.dtype) for p, n in zip(paths, names)]
    chat = Chat(
        loaded,
        settings,
        system=flags.FLAGS.system,
        shared_history=flags.FLAGS.shared_history,
        stop=flags.FLAGS.stop,
    )
    if sys.stdin.isatty():
        print(f"chatting with {', '.join(names)}; /help for commands, /quit or Ctrl-D to leave", flush=True)
    run(chat, sys.stdin, flags.FLAGS.layout)


if __name__ == "__main__":
    from jaxalign.errors import run_main

    define_flags()
    run_main(main)  # a bad flag or checkpoint: `error: <one line>`, exit code 2 (--verbosity=1: traceback)
