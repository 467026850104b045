"""The assistant mask on hand-checked renderings of ChatML and Llama-3-style templates."""
from __future__ import annotations

import numpy as np
import pytest

from chat_templates import CHATML, CHATML_SPECIALS, LLAMA3, LLAMA3_SPECIALS, train_chat_tokenizer
from kdstream.data.conversations import conversations_of
from kdstream.errors import KdError
from kdstream.text.chat import ChatOptions, chat_examples, target_ranges

TURNS = [{"role": "user", "content": "What is two plus two?"},
         {"role": "assistant", "content": "Four, of course."},
         {"role": "user", "content": "And three plus three?"},
         {"role": "assistant", "content": "Six."}]


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def family(request, tmp_path_factory, docs):
    template, specials = (CHATML, CHATML_SPECIALS) if request.param == "chatml" else (LLAMA3, LLAMA3_SPECIALS)
    tok = train_chat_tokenizer(docs[:60], 512, tmp_path_factory.mktemp(request.param), template, specials)
    return request.param, tok, template


def target_text(tok, template, messages, seq_len=512, train_on="assistant"):
    """The decoded tokens of the target rows (row t's target is token t+1), as one string per run."""
    conv = conversations_of([{"messages": messages}], "test")
    ex = chat_examples(conv, tok, template, seq_len, ChatOptions(train_on=train_on))
    ids, mask = ex.input_ids[0], ex.target_mask[0]
    targets = ids[1:][mask]
    return tok.decode(targets), ex


@pytest.mark.parametrize("system", [False, True])
def test_targets_are_every_assistant_content_token_and_its_closing_token(family, system):
    name, tok, template = family
    messages = ([{"role": "system", "content": "Be brief."}] if system else []) + TURNS
    text, _ = target_text(tok, template, messages)
    close = "<|im_end|>" if name == "chatml" else "<|eot_id|>"
    assert text == f"Four, of course.{close}Six.{close}"  # hand-checked: content + closing, nothing else


def test_no_user_system_or_header_token_is_a_target(family):
    name, tok, template = family
    messages = [{"role": "system", "content": "Be brief."}] + TURNS
    rendered, ranges = target_ranges(tok, template, messages)
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    conv = conversations_of([{"messages": messages}], "test")
    mask = chat_examples(conv, tok, template, 512, ChatOptions()).target_mask[0]
    for j, (a, b) in enumerate(enc["offset_mapping"][1:]):
        piece = rendered[a:b]
        if mask[j]:
            assert "user" not in piece and "system" not in piece and "Be brief" not in piece
            assert "two plus two" not in piece and "header" not in piece and "im_start" not in piece


def test_a_conversation_cut_inside_an_assistant_turn_keeps_the_targets_before_the_cut(family):
    name, tok, template = family
    full, ex_full = target_text(tok, template, TURNS)
    L = int(ex_full.length[0]) - 3  # three tokens short: inside the last assistant turn
    cut, ex = target_text(tok, template, TURNS, seq_len=L)
    assert ex.counts["truncated"] == 1 and ex.length[0] == L
    assert np.array_equal(ex.target_mask[0], ex_full.target_mask[0][: L - 1])
    assert full.startswith(cut) and len(cut) < len(full)


def test_train_on_all_makes_every_position_a_target(family):
    _, tok, template = family
    _, ex = target_text(tok, template, TURNS, train_on="all")
    assert ex.target_mask[0].sum() == ex.length[0] - 1


def test_on_long_drop_drops_and_counts(family):
    _, tok, template = family
    conv = conversations_of([{"messages": TURNS}, {"messages": TURNS[:2]}], "test")
    _, ex_full = target_text(tok, template, TURNS)
    ex = chat_examples(conv, tok, template, int(ex_full.length[0]) - 1, ChatOptions(on_long="drop"))
    assert len(ex) == 1 and ex.counts["dropped"] == 1 and ex.doc_index.tolist() == [1]


def test_a_template_that_fails_names_the_row(family):
    _, tok, _ = family
    conv = conversations_of([{"messages": TURNS}], "test")
    with pytest.raises(KdError, match="row 0: the chat template failed"):
        chat_examples(conv, tok, "{{ raise_exception('no') }}", 128, ChatOptions())


def test_a_template_without_special_tokens_targets_the_content(family):
    _, tok, _ = family
    plain = ("{% for m in messages %}{% if m['role'] == 'user' %}### Question:\n{{ m['content'] }}\n\n"
             "{% else %}### Answer:\n{{ m['content'] }}\n\n{% endif %}{% endfor %}")
    text, _ = target_text(tok, plain, TURNS)
    assert text == "Four, of course.Six."  # each answer up to its text's end, not the blank line after it


def test_a_prompt_renders_up_to_the_assistant_header_and_the_closing_token_is_found(family):
    from kdstream.text.chat import closing_token, prompt_tokens

    name, tok, template = family
    prompt = tok.decode(prompt_tokens(tok, template, TURNS[:3]))
    full = tok.apply_chat_template(TURNS, chat_template=template, tokenize=False)
    header = "<|im_start|>assistant\n" if name == "chatml" else "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert prompt.endswith(header) and full.startswith(prompt)
    closing = "<|im_end|>" if name == "chatml" else "<|eot_id|>"
    assert closing_token(tok, template) == tok.convert_tokens_to_ids(closing)
