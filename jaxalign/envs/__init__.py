"""Environments for multi-turn RL: the protocol, the tool library and the engine that runs episodes.

An environment is a plugin class named as ``"package.module:Class"`` (`config.env.name`), made with the
keyword arguments in `config.env.args`. It is batched: one object answers every episode of a rollout.

    class MyEnv:
        tools = [...]          # optional: JSON schemas the chat template renders (`tools=`), else absent

        def reset(self, rows) -> list[list[dict]]:
            '''rows: the rollout's prompt rows ({"prompt", "answer", ...}, each repeated for its group's
            samples): one conversation (a list of chat messages) per episode, which the chat template
            renders (with the generation prompt) as the episode's first prompt. Keep what `step` needs
            (e.g. the answers) on `self`, by episode index.'''

        def step(self, conversations, completions) -> list[tuple]:
            '''completions[i]: episode i's new model turn (decoded, special tokens kept), or None when
            the episode is already done. One (messages, reward, info) per episode: the messages to
            append after the model's turn (e.g. `role: tool` answers), or None when the episode is done
            (the entry of a done episode is ignored); the turn's reward (a finite number); and a dict
            of numbers, each summed over the episode's turns and logged as its mean over episodes.'''

The engine (`episodes.Episodes`) appends the model's turn (`role: assistant`) and the environment's
messages to each conversation, tokenises what the chat template adds for them (the environment's tokens:
context, not loss), and samples the next turn on the KV cache of the turns before: only the appended
tokens are prefilled. Episodes end when the environment says so, after `env.max_turns` model turns, or when
the appended tokens pass `env.max_env_tokens`. The update sees one sequence per episode: prompt, then every
model turn (in the loss and the KL) and every appended message (masked out of both).
"""

from jaxalign.envs.episodes import Episodes, EpisodeBatch
from jaxalign.envs.tools import (
    EpisodeError,
    ToolEnv,
    ToolError,
    calc,
    calculator,
    parse_tool_calls,
    tool_schema,
)

__all__ = [
    "Episodes",
    "EpisodeBatch",
    "EpisodeError",
    "ToolEnv",
    "ToolError",
    "calc",
    "calculator",
    "parse_tool_calls",
    "tool_schema",
]
