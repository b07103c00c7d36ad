"""Loss masks token by token on chat templates, with and without {% generation %}.

Most tests use the embedded tokenizer with an ordinary template that ends every assistant turn with EOS;
the embedded template itself (EOS only at the conversation's end) has its own tests at the bottom.
"""

import numpy as np
import pytest

from jaxalign.data import embedded, templates

U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731
CONV = [U("what is 3 plus 5?"), A("3 plus 5 is 8."), U("what is 2 times 4?"), A("2 times 4 is 8.")]


# EOS closes every assistant turn (as Llama 2's and Gemma's templates do).
PER_TURN_EOS_TEMPLATE = embedded.CHAT_TEMPLATE.replace(
    "{% elif loop.last %}{{ eos_token }}{% endif %}", "{% else %}{{ eos_token }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    t = embedded.load_tokenizer()
    assert PER_TURN_EOS_TEMPLATE != t.chat_template
    t.chat_template = PER_TURN_EOS_TEMPLATE
    return t


@pytest.fixture(scope="module")
def tok_plain():
    """The same tokenizer with the {% generation %} marks removed: masks come prefix by prefix."""
    t = embedded.load_tokenizer()
    t.chat_template = PER_TURN_EOS_TEMPLATE
    t.chat_template = t.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert not templates.has_generation_marks(t)
    return t


def expected_mask(tok, messages):
    """Builds the expected token-level mask by hand from the template's pieces."""
    ids, mask = [tok.bos_token_id], [0]
    for m in messages:
        if m["role"] == "user":
            piece = [tok.convert_tokens_to_ids("<|user|>")] + tok(m["content"], add_special_tokens=False)[
                "input_ids"
            ]
            ids += piece
            mask += [0] * len(piece)
        else:
            ids += [tok.convert_tokens_to_ids("<|assistant|>")]
            mask += [0]
            piece = tok(m["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids += piece
            mask += [1] * len(piece)
    return ids, mask


@pytest.mark.parametrize("which", ["tok", "tok_plain"])
def test_assistant_only_mask_token_by_token(which, request):
    t = request.getfixturevalue(which)
    ids, mask = templates.encode_messages(t, CONV, assistant_only_loss=True)
    want_ids, want_mask = expected_mask(t, CONV)
    assert ids.tolist() == want_ids
    assert mask.tolist() == want_mask
    tokens = t.convert_ids_to_tokens(ids.tolist())
    # User turns and role markers masked; assistant content and each closing EOS are targets.
    assert [tk for tk, m in zip(tokens, mask) if m] == [
        "3",
        "Ġplus",
        "Ġ5",
        "Ġis",
        "Ġ8",
        ".",
        "<|eos|>",
        "2",
        "Ġtimes",
        "Ġ4",
        "Ġis",
        "Ġ8",
        ".",
        "<|eos|>",
    ]
    assert tokens.count("<|eos|>") == 2


def test_whole_conversation_mask(tok):
    ids, mask = templates.encode_messages(tok, CONV, assistant_only_loss=False)
    assert mask.tolist() == [1] * len(ids)


def test_prompt_completion_messages(tok, tok_plain):
    for t in (tok, tok_plain):
        p, c, cm = templates.encode_prompt_completion(t, CONV[:3], [CONV[3]])
        full, mask = templates.encode_messages(t, CONV)
        assert np.concatenate([p, c]).tolist() == full.tolist()
        assert t.convert_ids_to_tokens(p.tolist())[-1] == "<|assistant|>"
        assert cm.tolist() == [1] * len(c) and c[-1] == t.eos_token_id
        assert mask[len(p) :].tolist() == cm.tolist()


def test_prompt_completion_plain_text(tok):
    p, c, cm = templates.encode_prompt_completion(tok, "User: 3 plus 5?\nAssistant:", " 8.")
    assert p[0] == tok.bos_token_id  # the tokenizer's own special tokens on the prompt
    assert c.tolist() == tok(" 8.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert cm.tolist() == [1] * len(c)


def test_text_ends_with_eos(tok):
    ids, mask = templates.encode_text(tok, "3 plus 5 is 8.")
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and mask.all()


def test_prompt_has_generation_prompt(tok):
    p = templates.encode_prompt(tok, [U("what is 3 plus 5?")])
    assert tok.decode(p.tolist()) == "<|bos|><|user|>what is 3 plus 5?<|assistant|>"


def test_no_chat_template_is_a_clear_error(tok):
    t = embedded.load_tokenizer()
    t.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        templates.encode_messages(t, CONV)


def test_embedded_template_eos_only_at_the_end():
    """The embedded template: a first answer runs into the next user turn; the masks come from the
    {% generation %} marks (the prefix-by-prefix fallback cannot work there, and says so)."""
    t = embedded.load_tokenizer()
    ids, mask = templates.encode_messages(t, CONV, assistant_only_loss=True)
    tokens = t.convert_ids_to_tokens(ids.tolist())
    assert [tk for tk, m in zip(tokens, mask) if m] == [
        "3",
        "Ġplus",
        "Ġ5",
        "Ġis",
        "Ġ8",
        ".",
        "2",
        "Ġtimes",
        "Ġ4",
        "Ġis",
        "Ġ8",
        ".",
        "<|eos|>",
    ]
    assert tokens.count("<|eos|>") == 1 and tokens[-1] == "<|eos|>"
    p, c, cm = templates.encode_prompt_completion(t, CONV[:3], [CONV[3]])
    assert np.concatenate([p, c]).tolist() == ids.tolist() and c[-1] == t.eos_token_id
    plain = embedded.load_tokenizer()
    plain.chat_template = plain.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    with pytest.raises(ValueError, match="generation"):
        templates.encode_messages(plain, CONV, assistant_only_loss=True)
