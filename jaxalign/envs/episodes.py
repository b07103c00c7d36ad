"""The multi-turn engine: runs a batch of episodes of an environment (see `jaxalign/envs/__init__.py`).

    eps = Episodes.build(config, model, tokenizer, mesh, batch_sharding, group=8, eos_ids=..., pad_id=...)
    out = eps.run(policy_params, prompt_batch, rng)        # EpisodeBatch: this host's rows, numpy

Turn 1 samples every episode's first prompt (a group's prompt prefilled once, `make_generate_fn(
keep_cache=True)`); each later turn prefills only what the environment appended, on the KV of the turns
before (`make_continue_fn`): an episode's tokens go through the model once each, whatever its number of
turns. The sequence the update reads is, per episode, its first prompt (left-padded, [R, P]) and then its
turns laid end to end, right-padded to `width` = max_turns × max_new_tokens + (max_turns - 1) ×
max_env_tokens: `mask` 1 on the model's tokens (loss, KL), `context` 1 on every real token (the model's and
the environment's: what attention sees).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import numpy as np

from jaxalign import hosts, plugins, sampling
from jaxalign.data import templates
from jaxalign.envs.tools import EpisodeError
from jaxalign.errors import ConfigError
from jaxalign.trainers import rewards


@dataclasses.dataclass
class EpisodeBatch:
    """A batch of finished episodes, this host's rows (numpy)."""

    prompt_ids: np.ndarray  # [R, P] int32 the first prompt, left-padded
    prompt_segment_ids: np.ndarray  # [R, P] int32
    tokens: np.ndarray  # [R, W] int32 the turns, end to end, right-padded
    mask: np.ndarray  # [R, W] int32 1 on the model's tokens
    context: np.ndarray  # [R, W] int32 1 on every real token (the model's and the environment's)
    model_logprobs: np.ndarray  # [R, W] float32 the sampler's log π of the model's tokens, else 0
    reward: np.ndarray  # [R] float32 the sum of the episode's turn rewards
    correct: Optional[np.ndarray]  # [R] float32 the check function on the last turn, or None
    texts: list  # [R] the last turn's text (special tokens kept)
    metrics: dict  # turns, env/*, the environment's own (tools/*), fed / context tokens
    num_tokens: int  # the model's tokens (this host's)


def _clean(text, tokenizer):
    """A turn's text as a message's content: without the special tokens the tokenizer knows."""
    for t in getattr(tokenizer, "all_special_tokens", ()):
        text = text.replace(t, "")
    return text


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclasses.dataclass
class Episodes:
    env_name: str
    env_args: dict
    tokenizer: Any
    first: Callable  # (params, ids, seg, rng) -> (GenerateOutput, cache); a group's prompt once
    first_greedy: Callable
    cont: Callable  # make_continue_fn
    cont_greedy: Callable
    group: int
    shared: bool  # `first` takes each group's prompt once
    max_turns: int
    max_new_tokens: int
    max_env_tokens: int
    max_prompt_length: int
    pad_id: int
    batch_sharding: Any
    check_fn: Optional[Callable] = None

    @property
    def width(self) -> int:
        return self.max_turns * self.max_new_tokens + (self.max_turns - 1) * self.max_env_tokens

    @classmethod
    def build(cls, config, model, tokenizer, mesh, batch_sharding, *, group, shared, eos_ids, pad_id):
        r, e = config.rollout, config.env
        kw = dict(max_new_tokens=r.max_new_tokens, eos_ids=eos_ids, pad_id=pad_id, mesh=mesh)
        kw["cache_buckets"] = r.cache_buckets
        sample = dict(temperature=r.temperature, top_k=r.top_k, top_p=r.top_p)
        first = dict(kw, compact=False, keep_cache=True)
        rw = config.reward
        return cls(
            env_name=e.name,
            env_args=dict(e.args.to_dict()) if hasattr(e.args, "to_dict") else dict(e.args),
            tokenizer=tokenizer,
            first=sampling.make_generate_fn(model, num_samples=group if shared else 1, **first, **sample),
            first_greedy=sampling.make_generate_fn(model, temperature=0.0, **first),
            cont=sampling.make_continue_fn(model, **kw, **sample),
            cont_greedy=sampling.make_continue_fn(model, temperature=0.0, **kw),
            group=group,
            shared=shared,
            max_turns=int(e.max_turns),
            max_new_tokens=int(r.max_new_tokens),
            max_env_tokens=int(e.max_env_tokens),
            max_prompt_length=int(config.data.max_prompt_length),
            pad_id=pad_id,
            batch_sharding=batch_sharding,
            check_fn=plugins.resolve_fn(rw.check_fn) if rw.check_fn else None,
        )

    # ------------------------------------------------------------------------------------------------
    def make_env(self):
        return make_env(self.env_name, self.env_args)

    def _fail(self, what, e, where):
        raise ConfigError(
            f"config.env.name={self.env_name!r}: {what} raised {type(e).__name__}: {e} ({where})"
        ) from None

    def _result(self, result, r, where):
        """One episode's (messages | None, reward, info) from `step`, its shape checked (one line if not)."""
        why = None
        if not isinstance(result, (tuple, list)) or len(result) != 3:
            why = f"gave {str(result)[:80]!r}, expected (messages | None, reward, info)"
        else:
            messages, _, info = result
            if messages is not None and (
                not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages)
            ):
                why = f"gave messages {str(messages)[:80]!r}, expected a list of chat messages or None"
            elif info is not None and (
                not isinstance(info, dict)
                or not all(isinstance(v, (int, float, np.number)) for v in info.values())
            ):
                why = f"gave info {str(info)[:80]!r}, expected a dict of numbers"
        if why:
            raise ConfigError(
                f"config.env.name={self.env_name!r}: step {why} (episode {r}, prompt row {where})"
            )
        return result

    def _render(self, conv, tools, generation_prompt):
        return templates.render(self.tokenizer, conv, add_generation_prompt=generation_prompt, tools=tools)

    def _appended_text(self, before, messages, tools):
        """What the chat template adds for `messages` after a model turn, up to the next generation
        prompt: the messages rendered after a one-word user turn, less that turn's rendering (a template's
        end-of-conversation marks, e.g. a final EOS after the last assistant turn, stay out). Falls back
        to the text after the longest common prefix of the conversation rendered with and without them."""
        probe = [{"role": "user", "content": "x"}]
        head = self._render(probe, tools, False)
        full = self._render(probe + messages, tools, True)
        if full.startswith(head):
            return full[len(head) :]
        a, b = self._render(before, tools, False), self._render(before + messages, tools, True)
        return b[_common_prefix(a, b) :]

    def _ids(self, text):
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def run(self, params, batch, rng, greedy=False) -> EpisodeBatch:
        """Episodes for this host's prompt rows `batch` (each `group` times unless `greedy`)."""
        g = 1 if greedy else self.group
        n_local = len(batch["answer"])
        rows = [
            {"prompt": batch["prompt"][i] or "", "answer": batch["answer"][i], "where": batch["where"][i]}
            for i in range(n_local)
            for _ in range(g)
        ]
        wheres = [r.pop("where") or "a padding row" for r in rows]
        env = self.make_env()
        try:
            convs = env.reset(rows)
        except Exception as e:  # the user's environment: one line
            self._fail("reset", e, f"prompt rows {wheres[0]} ..." if wheres else "no rows")
        tools = getattr(env, "tools", None) or None
        R = len(rows)
        prompts = []
        for i, c in enumerate(convs):
            try:
                prompts.append(self._ids(self._render(c, tools, True)))
            except Exception as e:  # not a conversation the chat template renders
                self._fail("the chat template on reset()'s conversation", e, f"prompt row {wheres[i]}")
        shared = self.shared and not greedy
        firsts = prompts[::g] if shared else prompts
        p = sampling.left_pad(firsts, self.pad_id, length=self.max_prompt_length)
        ids, seg = (hosts.to_global(p[k], self.batch_sharding) for k in ("prompt_ids", "prompt_segment_ids"))
        out, cache = (self.first_greedy if greedy else self.first)(params, ids, seg, rng)
        full = sampling.left_pad(prompts, self.pad_id, length=self.max_prompt_length)
        ctx_len = (
            full["prompt_segment_ids"].sum(-1).astype(np.int64)
        )  # real tokens so far (incl. last sampled)

        seq = [[] for _ in range(R)]  # the turns end to end: (token, model's?, log-prob)
        done = np.zeros(R, bool)
        turns = np.zeros(R, np.int64)
        turn_rewards = [[] for _ in range(R)]
        totals: dict[str, np.ndarray] = {}
        texts = [""] * R
        truncated = np.zeros(R, bool)
        fed = int(np.sum(full["prompt_segment_ids"][::g] if shared else full["prompt_segment_ids"]))
        for t in range(self.max_turns):
            o = {k: hosts.local_rows(v) for k, v in hosts.gather(out._asdict()).items()}
            step_texts = [None] * R
            for r in np.flatnonzero(~done):
                m = o["mask"][r] == 1
                toks, lps = o["tokens"][r][m], o["model_logprobs"][r][m]
                seq[r] += [(int(a), 1, float(b)) for a, b in zip(toks, lps)]
                ctx_len[r] += len(toks)
                fed += len(toks)
                turns[r] += 1
                step_texts[r] = self.tokenizer.decode([int(a) for a in toks], skip_special_tokens=False)
                texts[r] = step_texts[r]
            try:
                results = env.step(convs, step_texts)
            except EpisodeError as e:
                self._fail("step", e, f"episode {e.index}, prompt row {wheres[e.index]}")
            except Exception as e:
                self._fail("step", e, f"prompt rows {wheres[0]} ...")
            if len(results) != R:
                raise ConfigError(
                    f"config.env.name={self.env_name!r}: step returned {len(results)} results for {R} episodes"
                )
            appended = [[] for _ in range(R)]
            for r in np.flatnonzero(~done):
                messages, reward, info = self._result(results[r], r, wheres[r])
                try:
                    reward = float(reward)
                except (TypeError, ValueError):
                    reward = float("nan")
                if not math.isfinite(reward):
                    raise ConfigError(
                        f"config.env.name={self.env_name!r}: step gave reward {results[r][1]!r}, not a finite "
                        f"number (episode {r}, prompt row {wheres[r]})"
                    )
                turn_rewards[r].append(reward)
                for k, v in (info or {}).items():
                    totals.setdefault(k, np.zeros(R, np.float64))[r] += float(v)
                if messages is None or not seq[r]:  # done (or a turn of no tokens: nothing to go on from)
                    done[r] = True
                    continue
                before = convs[r] + [{"role": "assistant", "content": _clean(step_texts[r], self.tokenizer)}]
                convs[r] = before + list(messages)
                if t + 1 == self.max_turns:  # out of turns
                    done[r] = truncated[r] = True
                    continue
                try:
                    suffix = self._ids(self._appended_text(before, list(messages), tools))
                except Exception as e:  # not messages the chat template renders
                    self._fail("the chat template on step()'s messages", e, f"prompt row {wheres[r]}")
                if not suffix or len(suffix) > self.max_env_tokens:  # over the budget: the episode ends
                    done[r] = truncated[r] = True
                    continue
                appended[r] = suffix
            if done.all():
                break
            # The next turn: each running row's last sampled token (never fed back) + what was appended.
            chunks = [[seq[r][-1][0]] + appended[r] if not done[r] else [] for r in range(R)]
            starts = np.where(done, 0, ctx_len - 1).astype(np.int32)
            for r in np.flatnonzero(~done):
                seq[r] += [(tok, 0, 0.0) for tok in appended[r]]
                ctx_len[r] += len(appended[r])
                fed += len(appended[r])
            a = sampling.left_pad(chunks, self.pad_id, length=self.max_env_tokens + 1)
            args = [
                hosts.to_global(x, self.batch_sharding)
                for x in (starts, a["prompt_ids"], a["prompt_segment_ids"])
            ]
            key = rng if rng is None else jax.random.fold_in(rng, t + 1)
            out, cache = (self.cont_greedy if greedy else self.cont)(params, cache, *args, key)

        w = self.width
        tokens = np.full((R, w), self.pad_id, np.int32)
        mask = np.zeros((R, w), np.int32)
        context = np.zeros((R, w), np.int32)
        lp = np.zeros((R, w), np.float32)
        for r, s in enumerate(seq):
            s = s[:w]
            if s:
                tokens[r, : len(s)] = [x[0] for x in s]
                mask[r, : len(s)] = [x[1] for x in s]
                context[r, : len(s)] = 1
                lp[r, : len(s)] = [x[2] for x in s]
        reward = np.asarray([sum(x) for x in turn_rewards], np.float32)
        correct = None
        if self.check_fn is not None:
            correct = np.asarray(
                [
                    float(
                        rewards.call_checked(
                            self.check_fn, "reward.check_fn", rw["answer"], txt, i, number=False
                        )
                    )
                    for i, (rw, txt) in enumerate(zip(rows, texts))
                ],
                np.float32,
            )
        per_turn = [x for rs in turn_rewards for x in rs]
        metrics = {
            "turns": float(np.mean(turns)),
            "env/final_reward": float(np.mean([rs[-1] if rs else 0.0 for rs in turn_rewards])),
            "env/turn_reward": float(np.mean(per_turn)) if per_turn else 0.0,
            "env/truncated": float(np.mean(truncated)),
            "env/context_tokens": float(np.mean(context.sum(-1) + full["prompt_segment_ids"].sum(-1))),
            # Tokens through the model per episode (a group's prompt once): at most its context's.
            "env/fed_tokens": fed / R,
        }
        summarize = getattr(env, "summarize", None)
        if summarize is not None:
            metrics.update(summarize(totals))
        else:
            metrics.update({f"env/{k}": float(np.mean(v)) for k, v in totals.items()})
        return EpisodeBatch(
            prompt_ids=full["prompt_ids"],
            prompt_segment_ids=full["prompt_segment_ids"],
            tokens=tokens,
            mask=mask,
            context=context,
            model_logprobs=lp,
            reward=reward,
            correct=correct,
            texts=texts,
            metrics=metrics,
            num_tokens=int(mask.sum()),
        )


def make_env(name, args):
    """The environment object `name` ("package.module:Class") made with `args`; one line if it fails."""
    try:
        cls = plugins.resolve_fn(name)
    except ValueError as e:
        raise ConfigError(f"config.env.name={name!r}: {e}") from None
    try:
        env = cls(**args)
    except Exception as e:
        raise ConfigError(
            f"config.env.name={name!r}: making it with config.env.args={args} raised {type(e).__name__}: {e}"
        ) from None
    for method in ("reset", "step"):
        if not callable(getattr(env, method, None)):
            raise ConfigError(f"config.env.name={name!r}: has no {method}() (see jaxalign/envs/__init__.py)")
    return env
