"""Evaluate a checkpoint on held-out prompts and text; writes <workdir>/eval.json, eval.md and plots.

  python -m jaxalign.main --config=configs/eval.py --workdir=/tmp/ev
  python -m jaxalign.main --config=configs/eval.py --workdir=/tmp/ev \
      --config.eval.checkpoint=runs/dpo/hf --config.eval.reference=runs/sft/hf

The default evaluates the embedded SFT checkpoint against itself as the reference (so KL = 0 and the
win rate = 0.5: a sanity check) with the embedded reward model, on prompts_test + decline_test (the
training wordings and new instances) and prompts_unseen_test + decline_unseen_test (wordings, look-alike
forms and names no training file has: generalization, not memory), greedy.
"""

import ml_collections

from jaxalign import defaults
from jaxalign.eval import judge


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.objective = "eval"
    c.seed = 0  # Sampling seed (unused when greedy).
    e = c.eval = ml_collections.ConfigDict()
    e.checkpoint = defaults.asset("checkpoints", "sft")  # The policy: an HF directory.
    e.tokenizer = ""  # "" = the checkpoint's own.
    e.reference = defaults.asset("checkpoints", "sft")  # KL and win-rate baseline; "" = neither.
    e.reward_model = defaults.asset("checkpoints", "reward")  # *ForSequenceClassification; "" = no reward.
    # Comma-separated prompt files: rows with "prompt" (+ "answer", + "should_refuse" for refusal rates).
    e.prompts = ",".join(
        defaults.asset(f"{name}.jsonl")
        for name in ("prompts_test", "decline_test", "prompts_unseen_test", "decline_unseen_test")
    )
    e.text_path = defaults.asset("pretrain_test.jsonl")  # Held-out {"text"} rows for perplexity; "" = none.
    e.check_fn = "jaxalign.data.embedded:check_answer"  # (row, completion) -> bool: accuracy.
    e.refusal_fn = "jaxalign.data.embedded:is_refusal"  # (completion) -> bool.
    e.user_turn_fn = "jaxalign.data.embedded:speaks_as_user"  # (completion) -> bool: not a clean stop.
    e.max_new_tokens = 24  # N; the embedded answers take ~10 tokens + EOS.
    e.max_prompt_length = 40  # P: longer prompts keep their last P tokens (embedded: <= 30).
    e.max_prompts = 0  # First this many prompts of each set; 0 = all.
    e.batch_size = 64  # Prompts per global batch; a multiple of data × fsdp.
    e.temperature = 0.0  # 0 = greedy.
    e.top_k = 0  # 0 = off.
    e.top_p = 1.0  # 1 = off.
    e.text_max_length = 64  # Tokens per perplexity chunk (longer texts are split).
    e.dtype = "float32"  # Compute dtype: float32 | bfloat16.
    e.plots = True  # PNG plots (needs matplotlib; skipped with a message without it).
    e.num_examples = 5  # Completions per prompt set shown in eval.md.
    # Another scorer of the policy's answers: any single-logit *ForSequenceClassification directory (a reward
    # model, a binary classifier), read with its own tokenizer; "" = none. num_labels > 1 is refused.
    e.classifier = ""
    e.classifier_input = "prompt_answer"  # prompt_answer | answer: what the classifier reads.
    # Multiple-choice benchmarks scored by log-likelihood as lm-evaluation-harness does (comma-separated
    # files or directories; MMLU or TruthfulQA-MC rows, e.g. jaxalign/assets/benchmarks/mmlu_sample.jsonl);
    # "" = none. Each is one more column of the table; eval.prompts may then be "".
    e.multiple_choice = ""
    e.mc_schema = "auto"  # auto | mmlu | truthfulqa_mc.
    e.mc_chat = False  # The question as a user message through the chat template.
    e.mc_truthfulqa_preamble = (
        False  # lm-eval's 6-question QA primer (~400 tokens here: set True for parity).
    )
    e.mc_max_questions = 0  # First this many questions of each file; 0 = all.
    # An LLM judge: any HF chat model directory (its own tokenizer and chat template) compares the policy's
    # answer with the reference's to each prompt, in both orders (position bias cancels), from its
    # next-token probabilities of "1" and "2" (no sampling): judge/win_rate, judge/win_rate_hard,
    # judge/position_consistency, judge/first_position_bias next to win_rate. Needs eval.reference; "" = off.
    e.judge = ""
    e.judge_template = judge.DEFAULT_TEMPLATE  # One user message with {question}, {answer_1}, {answer_2}.

    base = defaults.base_config("eval", train="")
    c.mesh = base.mesh  # Prompts are sharded over data × fsdp; params as in training.
    c.distributed = base.distributed
    return defaults.lock(c)
