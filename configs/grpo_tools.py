"""GRPO with a calculator tool on multi-digit arithmetic (jaxalign.envs:ToolEnv): multi-turn episodes.

python -m jaxalign.main --config=configs/grpo_tools.py --workdir=/tmp/grpo_tools

The questions (``what is 47 times 86?``, sums and differences of 2-3 digit numbers) are beyond what the
tiny model computes in its head. The environment lists the tool in the prompt (``<|tools|>calc(expr)``);
a turn that calls it (``<|call|>calc{"expr": "47 times 86"}``) is answered by the tool (``<|tool|>4042``)
and the model takes another turn; a turn without a call ends the episode and is scored by the embedded
reward (1 correct and stopped, 0.5 correct, 0 wrong). The tool's answers are context, not loss.

The start is `checkpoints/sft_tools`: the embedded SFT model trained further on `tools_sft_train.jsonl`
(whose labeller used the calculator in 60% of the rows and answered in their head, with a near miss, in
the rest) mixed with `sft_train.jsonl`:

python -m jaxalign.main --config=configs/sft.py \
  --config.model.path=jaxalign/assets/embedded/checkpoints/sft \
  --config.data.train=jaxalign/assets/embedded/tools_sft_train.jsonl,jaxalign/assets/embedded/sft_train.jsonl \
  --config.data.eval= --config.train.num_steps=1500 --config.train.eval_every=0 --workdir=/tmp/sft_tools
# then /tmp/sft_tools/hf is checkpoints/sft_tools (launch/make_embedded.sh does both)

Logged: tools/call_rate, tools/calls_per_episode, tools/errors, tools/well_formed, turns, env/* (per-turn and
final rewards, truncated episodes, fed vs context tokens per episode); held-out accuracy on
tool_prompts_test.jsonl (300 multi-digit questions, operand pairs never in training).
"""

import os

from jaxalign import defaults


def get_config(arg=None):
    del arg
    c = defaults.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo.py"))
    c.data.train = defaults.asset("tool_prompts_train.jsonl")
    c.data.eval = defaults.asset("tool_prompts_test.jsonl")
    c.model.path = defaults.asset("checkpoints", "sft_tools")
    c.train.num_steps = 60
    c.train.eval_every = 30
    c.train.eval_batch_size = 160  # 300 held-out prompts = 2 batches (the last one padded).
    c.env.name = "jaxalign.envs:ToolEnv"
    with c.unlocked():  # the environment's own arguments
        c.env.args.tools = "jaxalign.envs.tools:calc"
        c.env.args.reward = "jaxalign.data.embedded:reward"
    c.env.max_turns = 2  # a call, then the answer (the model's 128 positions bound the episode)
    c.env.max_env_tokens = 16  # the tool's answer and the next generation prompt (<|tool|> is 8 tokens)
    c.rollout.max_new_tokens = 34  # a call is ~30 tokens (the embedded tokenizer spells most of it)
    c.data.max_prompt_length = 40  # the tools line + the question
    c.data.max_length = 40 + 2 * 34 + 16
    return c
