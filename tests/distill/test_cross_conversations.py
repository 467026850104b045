"""A student of another tokenizer (Llama-3-style headers) on a ChatML teacher's conversation store:
each conversation rendered with the student's own template, aligned on the answers' content only."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import last_json, one_line_error, run_cli
from kdstream.storage import open_store

KEYS = ("input_ids", "target_logprob", "topk_ids", "topk_logprobs", "topk_len", "doc_index")


@pytest.fixture(scope="module")
def targets(chat_store, chat_teacher_dir, llama3_student):
    from kdstream.distill.cross_conversations import conversation_targets
    from kdstream.distill.cross_tokenizer import CrossTargets
    from kdstream.text.tokenizers import load_tokenizer

    cross = CrossTargets.build(load_tokenizer(chat_teacher_dir), llama3_student[1], "alm+exact", "prefix")
    return conversation_targets(cross, open_store(str(chat_store)), None)


def test_the_student_sees_its_own_template_and_learns_only_the_answers(targets, chat_store, llama3_student,
                                                                       chat_teacher_dir):
    from chat_templates import LLAMA3
    from kdstream.data.conversations import conversations_of, read_rows
    from kdstream.text.chat import target_ranges
    from kdstream.text.tokenizers import load_tokenizer

    im_end = load_tokenizer(chat_teacher_dir).convert_tokens_to_ids("<|im_end|>")
    tok = llama3_student[1]
    store = open_store(str(chat_store))
    rows = store.read(0, len(store), KEYS)
    out = targets(rows)
    examples = out["aligned"]
    assert len(examples) == len(store) and not out["skipped"]
    conv = conversations_of(read_rows(store.attrs["corpus"]["source"]), "chat")
    messages = dict(zip(conv.rows, conv.items))
    for b, e in enumerate(examples):
        text, ranges = target_ranges(tok, LLAMA3, messages[int(rows["doc_index"][b])])
        spelled = tok.decode(e.student_ids, skip_special_tokens=False)
        assert text.startswith(spelled) and spelled.startswith("<|begin_of_text|><|start_header_id|>"), b
        learned = tok.decode(e.student_ids[e.targets], skip_special_tokens=False)
        answers = "".join(text[a:z] for a, z in ranges)  # content + <|eot_id|> of each answer
        assert answers.startswith(learned) and len(learned) > 0, b  # never a header, a user or system token
        assert "<|im_end|>" not in spelled and "<|im_start|>" not in spelled  # no teacher template token
        # the chunks' teacher log-likelihoods add up every content row of the store's, nothing else
        t = rows["input_ids"][b]
        tgt = np.zeros(len(t), bool)
        tgt[1:] = rows["topk_len"][b] > 0
        content = tgt & (t != im_end)
        want = rows["target_logprob"][b][np.flatnonzero(content) - 1].astype(np.float64).sum()
        assert e.teacher_chunk_logprob.sum() == pytest.approx(want, rel=1e-9, abs=1e-6), b
        # exact rows predict the first token of a learned chunk
        assert e.targets[e.exact_rows + 1].all() and len(e.exact_rows) == len(e.exact_ids) > 0
    usable = np.concatenate([e.usable for e in examples])
    assert usable.mean() > 0.3  # the answers' chunks, not the one chunk of each template piece


def test_distill_across_tokenizers_on_conversations(tmp_path, chat_store, llama3_student, chat_file):
    from chat_templates import LLAMA3, without_template

    student, _ = llama3_student
    args = ["distill", "--logits-store", chat_store, "--model", student, "--epochs", 1, "--batch-size", 8,
            "--eval-examples", 6, "--lr", "1e-3"]
    summary = last_json(run_cli(*args, "--out", tmp_path / "kd").stdout)
    assert np.isfinite(summary["final_loss"]) and summary["held_out_bits_per_byte"] > 0
    assert summary["skipped_examples"]["content_differs"] == 0  # counted beside the aligner's reasons
    ce = last_json(run_cli(*args, "--loss", "ce", "--out", tmp_path / "ce").stdout)
    assert np.isfinite(ce["final_loss"]) and ce["held_out_tokens"] == summary["held_out_tokens"] > 0

    # a student tokenizer without a template: the flag, or a one-line error naming it
    bare = without_template(student, tmp_path / "bare")
    proc = run_cli(*args, "--model", bare, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "--student-chat-template" in one_line_error(proc)
    template = tmp_path / "llama3.jinja"
    template.write_text(LLAMA3)
    again = last_json(run_cli(*args, "--model", bare, "--student-chat-template", template, "--out",
                              tmp_path / "t").stdout)
    assert again["final_loss"] == pytest.approx(summary["final_loss"])


def test_what_a_student_of_another_tokenizer_cannot_use_is_refused_in_one_line(tmp_path, chat_teacher_dir, chat_file,
                                                                              chat_store, llama3_student):
    from chat_templates import chat_precompute_args

    student, _ = llama3_student
    data = tmp_path / "chat.jsonl"
    data.write_text(chat_file.read_text())
    store = tmp_path / "s.zarr"
    run_cli(*chat_precompute_args(chat_teacher_dir, data, store, "--max-examples", 4, "--backend", "hf"))
    args = ["distill", "--logits-store", store, "--model", student, "--epochs", 1, "--out", tmp_path / "o"]
    data.write_text(data.read_text() + data.read_text().splitlines(keepends=True)[0])  # one row more
    assert "has changed since store" in one_line_error(run_cli(*args, check=False))
    data.unlink()
    assert "which is not here" in one_line_error(run_cli(*args, check=False))
    proc = run_cli("distill", "--logits-store", chat_store, "--model", chat_teacher_dir,
                   "--student-chat-template", chat_file, "--out", tmp_path / "o", check=False)
    assert "--student-chat-template is for a student of another tokenizer" in one_line_error(proc)
    assert not (tmp_path / "o").exists()


def test_a_student_template_that_rewrites_the_answers_skips_them_counted(targets, chat_store):
    from dataclasses import replace

    from chat_templates import LLAMA3

    store = open_store(str(chat_store))
    shouting = replace(targets, template=LLAMA3.replace("message['content'] | trim", "message['content'] | upper"))
    out = shouting(store.read(0, 8, KEYS))
    assert out["aligned"] == [] and out["skipped"] == {"content_differs": 8}


def test_a_sentencepiece_students_first_answer_token_learns_the_lead_it_writes(tmp_path, chat_store,
                                                                               chat_teacher_dir, docs):
    """Its answers start a piece, so its first answer token is "▁Word" where the teacher's is "Word":
    the exact row there maps the teacher's top-k to "▁"-led student tokens, as the student writes."""
    from chat_templates import INST
    from kdstream.distill.cross_conversations import conversation_targets
    from kdstream.distill.cross_tokenizer import CrossTargets
    from kdstream.text.tokenizers import load_tokenizer, train_sentencepiece_style_tokenizer

    tok = train_sentencepiece_style_tokenizer(docs[:60], 600)
    template = tmp_path / "inst.jinja"
    template.write_text(INST)
    store = open_store(str(chat_store))
    for rule in ("prefix", "identical"):
        cross = CrossTargets.build(load_tokenizer(chat_teacher_dir), tok, "alm+exact", rule)
        out = conversation_targets(cross, store, str(template))(store.read(0, len(store), KEYS))
        assert out["aligned"] and not out["skipped"]
        spelled = cross.aligner.s.tokens
        leads = 0
        for e in out["aligned"]:
            first = int(np.argmax(e.targets))  # the first answer token it learns
            assert spelled[e.student_ids[first]].startswith(b" ")
            at = np.flatnonzero(e.exact_rows == first - 1)
            if len(at):
                mapped = e.exact_ids[at[0]][np.isfinite(e.exact_logprobs[at[0]])]
                assert all(spelled[i].startswith(b" ") for i in mapped.tolist()), rule
                assert len(set(mapped.tolist())) == len(mapped)  # merged: each student id once
                leads += 1
        if rule == "prefix":  # (the identical map of a tiny vocabulary maps few first words at all)
            assert leads > len(out["aligned"]) // 2


def test_on_a_generate_store_the_student_learns_the_teachers_responses(tmp_path, gen_store, chat_teacher_dir,
                                                                       llama3_student):
    from kdstream.distill.cross_conversations import conversation_targets
    from kdstream.distill.cross_tokenizer import CrossTargets
    from kdstream.text.tokenizers import load_tokenizer

    teacher, (student, tok) = load_tokenizer(chat_teacher_dir), llama3_student
    store = open_store(str(gen_store[0]))
    cross = CrossTargets.build(teacher, tok, "alm+exact", "prefix")
    rows = store.read(0, len(store), KEYS)
    out = conversation_targets(cross, store, None)(rows)
    assert len(out["aligned"]) + sum(out["skipped"].values()) == len(store) and out["aligned"]
    for e in out["aligned"]:  # what it learns is a response the teacher wrote, then (if it stopped) <|eot_id|>
        learned = tok.decode(e.student_ids[e.targets], skip_special_tokens=False)
        responses = [teacher.decode(r["input_ids"][r["positions"] + 1], skip_special_tokens=True)
                     for r in (store[i] for i in range(len(store)))]
        assert any(learned in (r, r + "<|eot_id|>") for r in responses), learned
    summary = last_json(run_cli("distill", "--logits-store", gen_store[0], "--model", student, "--epochs", 1,
                                "--out", tmp_path / "kd").stdout)
    assert np.isfinite(summary["final_loss"]) and summary["cross_tokenizer"] == "alm+exact"
