"""The multi-turn engine: environment tokens are context (mask 0, context 1), the kept KV gives the same
log-probs as a full forward over the episode, no turn re-prefills the ones before, and an environment's
failures are one line naming it and the prompt row."""

import math

import jax
import numpy as np
import pytest

from jaxalign import models, sampling, sharding
from jaxalign.data import embedded
from jaxalign.envs import EpisodeError, Episodes
from jaxalign.errors import ConfigError
from jaxalign.sampling import scoring

TOK = embedded.load_tokenizer()
CFG = models.ModelConfig(
    vocab_size=len(TOK),
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    intermediate_size=64,
    initializer_range=0.2,
)
EOS = (TOK.eos_token_id,)


class Scripted:
    """Turn 1 is answered by a tool message; turn 2 ends the episode. Rewards 0.25 then 1."""

    def __init__(self, fail_at=None, bad_reward=False, episode=None):
        self.fail_at, self.bad_reward, self.episode = fail_at, bad_reward, episode

    def reset(self, rows):
        self.turn = 0
        return [
            [{"role": "user", "content": p}] if isinstance(p := r["prompt"], str) else list(p) for r in rows
        ]

    def step(self, conversations, completions):
        self.turn += 1
        if self.fail_at == self.turn:
            if self.episode is not None:
                raise EpisodeError(self.episode, "its sandbox is down")
            raise RuntimeError("the sandbox is down")
        out = []
        for c in completions:
            if self.turn == 1:
                out.append(([{"role": "tool", "content": "42"}], 0.25, {"calls": 1}))
            else:
                out.append((None, math.nan if self.bad_reward else 1.0, {"calls": 0}))
        return out


def _episodes(env_name="tests.envs.test_episodes:Scripted", env_args=None, group=2, n=10, a=16):
    model = models.Transformer(CFG)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    bs = sharding.batch_sharding(mesh)
    kw = dict(max_new_tokens=n, eos_ids=EOS, pad_id=0, mesh=mesh)
    first = dict(kw, compact=False, keep_cache=True)
    eps = Episodes(
        env_name=env_name,
        env_args=env_args or {},
        tokenizer=TOK,
        first=sampling.make_generate_fn(model, num_samples=group, temperature=1.0, **first),
        first_greedy=sampling.make_generate_fn(model, temperature=0.0, **first),
        cont=sampling.make_continue_fn(model, temperature=1.0, **kw),
        cont_greedy=sampling.make_continue_fn(model, temperature=0.0, **kw),
        group=group,
        shared=True,
        max_turns=3,
        max_new_tokens=n,
        max_env_tokens=a,
        max_prompt_length=16,
        pad_id=0,
        batch_sharding=bs,
        check_fn=embedded.check_answer,
    )
    params = jax.jit(models.init_params, static_argnums=0)(CFG, jax.random.key(0))
    return model, params, eps


BATCH = {
    "prompt": ["what is 2 plus 3?", "compute 4 minus 1."],
    "answer": ["5", "3"],
    "where": ["f line 1", "f line 2"],
}


def test_environment_tokens_are_context_and_logprobs_match_a_full_forward():
    model, params, eps = _episodes()
    out = eps.run(params, BATCH, jax.random.key(1))
    R = 4
    assert out.tokens.shape == (R, eps.width) and out.mask.shape == out.context.shape
    tool = TOK("<|tool|>42<|assistant|>", add_special_tokens=False)["input_ids"]
    for r in range(R):
        ctx = out.tokens[r][out.context[r] == 1]
        model_tokens = out.tokens[r][out.mask[r] == 1]
        env_tokens = out.tokens[r][(out.context[r] == 1) & (out.mask[r] == 0)]
        assert list(env_tokens) == tool  # what the environment appended, masked out of the loss
        assert len(ctx) == len(model_tokens) + len(tool)
        assert (out.mask[r] <= out.context[r]).all()
    np.testing.assert_allclose(out.reward, 1.25)  # 0.25 for the first turn + 1 at the end
    assert out.metrics["turns"] == 2 and out.metrics["env/calls"] == 1
    assert out.metrics["env/final_reward"] == 1.0 and out.metrics["env/turn_reward"] == pytest.approx(0.625)
    # The sampler's log-probs (each turn on the kept KV) = a full forward over prompt + turns + tool tokens.
    rollout = {
        "prompt_ids": out.prompt_ids,
        "prompt_segment_ids": out.prompt_segment_ids,
        "tokens": out.tokens,
        "mask": out.mask,
        "context": out.context,
    }
    lp, _ = jax.jit(lambda p, ro: scoring.completion_logprobs(model, p, ro))(params, rollout)
    np.testing.assert_allclose(np.asarray(lp), out.model_logprobs, atol=2e-4)
    # Without the context the environment's tokens would be padding: different log-probs.
    no_ctx = {k: v for k, v in rollout.items() if k != "context"}
    lp2, _ = jax.jit(lambda p, ro: scoring.completion_logprobs(model, p, ro))(params, no_ctx)
    assert np.abs(np.asarray(lp2) - out.model_logprobs).max() > 1e-2
    # No re-prefill: each episode's tokens go through the model once (a group's prompt once for both).
    prompt = out.prompt_segment_ids.sum(-1)
    assert out.metrics["env/fed_tokens"] == pytest.approx((out.context.sum() + prompt[::2].sum()) / R)
    assert out.metrics["env/fed_tokens"] < out.metrics["env/context_tokens"]


def test_greedy_episodes_are_reproducible_and_stopped_reads_the_last_turn():
    _, params, eps = _episodes()
    a = eps.run(params, BATCH, jax.random.key(0), greedy=True)
    b = eps.run(params, BATCH, jax.random.key(5), greedy=True)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.tokens.shape[0] == 2  # greedy: one episode per prompt


def test_environment_failures_are_one_line():
    _, params, eps = _episodes(env_args={"fail_at": 2})
    with pytest.raises(
        ConfigError,
        match=r"config.env.name='tests.envs.test_episodes:Scripted': step raised "
        r"RuntimeError: the sandbox is down \(prompt rows f line 1",
    ):
        eps.run(params, BATCH, jax.random.key(1))
    _, params, eps = _episodes(env_args={"bad_reward": True})
    with pytest.raises(
        ConfigError, match=r"reward nan, not a finite number \(episode 0, prompt row f line 1\)"
    ):
        eps.run(params, BATCH, jax.random.key(1))
    _, params, eps = _episodes(env_name="tests.envs.test_episodes:Nope")
    with pytest.raises(ConfigError, match="config.env.name='tests.envs.test_episodes:Nope'"):
        eps.run(params, BATCH, jax.random.key(1))
    _, params, eps = _episodes(env_args={"unknown": 1})
    with pytest.raises(ConfigError, match="making it with config.env.args"):
        eps.run(params, BATCH, jax.random.key(1))


def test_an_episode_error_names_its_prompt_row():
    _, params, eps = _episodes(env_args={"fail_at": 1, "episode": 2})  # episode 2 = row 2's first sample
    with pytest.raises(
        ConfigError, match=r"step raised EpisodeError: its sandbox is down \(episode 2, prompt row f line 2\)"
    ):
        eps.run(params, BATCH, jax.random.key(1))


CHATML = (
    "{% for m in messages %}"
    "{% if m['role'] == 'tool' %}{{ '<|im_start|>user\\n<tool_response>\\n' + m['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_appended_text_under_a_chatml_template():
    """What a Qwen-style (ChatML, Hermes tool calls) template adds after a model turn: the tool's answer
    and the next generation prompt, not the turn's own end marks."""
    import copy

    tok = copy.deepcopy(TOK)
    tok.chat_template = CHATML
    _, _, eps = _episodes()
    eps.tokenizer = tok
    before = [
        {"role": "user", "content": "what is 2 plus 3?"},
        {
            "role": "assistant",
            "content": '<tool_call>{"name": "calc", "arguments": {"expr": "2 plus 3"}}</tool_call>',
        },
    ]
    text = eps._appended_text(before, [{"role": "tool", "content": "5"}], None)
    assert text == "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    # ... and for the embedded template, whose last assistant turn ends with <|eos|>: none of it.
    _, _, eps = _episodes()
    text = eps._appended_text(before, [{"role": "tool", "content": "5"}], None)
    assert text == "<|tool|>5<|assistant|>"
