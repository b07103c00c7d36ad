"""Text glue (prompt batches, decoding, stop strings) with the embedded tokenizer, and the sample CLI."""

import jax
import numpy as np
import pytest

from absl import flags

from jaxalign import models, sample
from jaxalign.checkpoints import load_tokenizer, save_hf_model
from jaxalign.data.embedded import TOKENIZER_DIR
from jaxalign.sampling import (
    GenerateOutput,
    build_prompt_batch,
    decode_completions,
    encode_stop_strings,
    eos_ids_of,
    left_pad,
    pad_id_of,
)
from jaxalign.sample import sample_texts


def _init(cfg):
    """Random params; jitted, because eager linen init runs op by op (seconds on a busy CPU)."""
    return jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.key(0))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER_DIR)


def test_left_pad_positions_and_truncation():
    b = left_pad([[7, 8, 9], [5], [1, 2, 3, 4, 5, 6]], pad_id=0, length=4)
    np.testing.assert_array_equal(b["prompt_ids"], [[0, 7, 8, 9], [0, 0, 0, 5], [3, 4, 5, 6]])
    np.testing.assert_array_equal(b["prompt_segment_ids"], [[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(b["prompt_positions"], [[0, 0, 1, 2], [0, 0, 0, 0], [0, 1, 2, 3]])
    assert left_pad([[1, 2, 3]], 0, pad_to_multiple=8)["prompt_ids"].shape == (1, 8)


def test_chat_prompt_batch_is_left_padded_template(tokenizer):
    prompts = ["what's 3 plus 7?", [{"role": "user", "content": "hi"}]]
    b = build_prompt_batch(tokenizer, prompts)
    for row, p in zip(range(2), prompts):
        msgs = [{"role": "user", "content": p}] if isinstance(p, str) else p
        want = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)["input_ids"]
        real = b["prompt_segment_ids"][row].astype(bool)
        assert b["prompt_ids"][row][real].tolist() == want
        assert real[-1]
    assert tokenizer.decode(b["prompt_ids"][0, -1:]) == "<|assistant|>"
    assert (b["prompt_ids"][1][~b["prompt_segment_ids"][1].astype(bool)] == pad_id_of(tokenizer)).all()


def test_decode_strips_pad_eos_and_stop_strings(tokenizer):
    eos, pad = eos_ids_of(tokenizer)[0], pad_id_of(tokenizer)
    ids = tokenizer("10 apples. More", add_special_tokens=False)["input_ids"]
    n = len(ids) + 3
    tokens = np.full((2, n), pad, np.int32)
    mask = np.zeros((2, n), np.int32)
    tokens[0, : len(ids) + 1] = ids + [eos]
    mask[0, : len(ids) + 1] = 1
    out = GenerateOutput(tokens, None, None, mask, mask.sum(-1))
    assert decode_completions(tokenizer, out) == ["10 apples. More", ""]
    assert decode_completions(tokenizer, out, stop_strings=[". "]) == ["10 apples", ""]
    (stop,) = encode_stop_strings(tokenizer, ["apples"])
    assert tokenizer.decode(list(stop)) == "apples"


def test_sample_cli_compares_checkpoints(tmp_path, tokenizer, capsys):
    cfg = models.ModelConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        intermediate_size=64,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.5,
    )
    ckpt = str(tmp_path / "tiny")
    save_hf_model(ckpt, cfg, _init(cfg), tokenizer=tokenizer)
    direct = sample_texts(ckpt, ["what's 3 plus 7?", "hi"], max_new_tokens=5)
    assert len(direct) == 2 and all(len(t) == 1 for t in direct)
    try:  # the CLI's main in-process (a subprocess would pay the imports and compilation again)
        flags.FLAGS(
            [
                "sample",
                f"--checkpoint={ckpt},{ckpt}",
                "--prompt=what's 3 plus 7?",
                "--prompt=hi",
                "--max_new_tokens=5",
            ]
        )
        sample.main(["sample"])
    finally:
        flags.FLAGS.unparse_flags()
    stdout = capsys.readouterr().out
    assert stdout.count("=== prompt") == 2 and stdout.count(f"--- {ckpt}") == 4, stdout
    assert f"--- {ckpt}\n{direct[0][0]}\n" in stdout
