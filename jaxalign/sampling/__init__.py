"""On-policy sampling: jitted prefill + while-loop decode with the KV cache, and text glue."""

from jaxalign.sampling.generate import (
    GenerateOutput,
    generate,
    make_continue_fn,
    make_generate_fn,
    prompt_positions,
    stages,
    to_training_batch,
)
from jaxalign.sampling.prompts import (
    build_prompt_batch,
    decode_completions,
    encode_stop_strings,
    eos_ids_of,
    left_pad,
    pad_id_of,
)
from jaxalign.sampling.sampling import process_logits, sample_token, sample_token_with_logprobs

__all__ = [
    "GenerateOutput",
    "generate",
    "make_generate_fn",
    "make_continue_fn",
    "stages",
    "prompt_positions",
    "to_training_batch",
    "build_prompt_batch",
    "decode_completions",
    "encode_stop_strings",
    "eos_ids_of",
    "left_pad",
    "pad_id_of",
    "process_logits",
    "sample_token",
    "sample_token_with_logprobs",
]
