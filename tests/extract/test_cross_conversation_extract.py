"""extract-eval on a ChatML teacher's conversation store of a student of another tokenizer
(Llama-3-style headers): prompted with its own rendering of each conversation, judged on the
answer's bytes."""
import json

import pyarrow.parquet as pq
import pytest

from helpers import one_line_error, run_cli, store_eval_shards
from kdstream.storage import open_store

TRAINED = 8  # conversations 0..7 are trained on; the rest are excluded
SUFFIX = ("--suffix-len", 6, "--dtype", "float32", "--backend", "hf")


@pytest.fixture(scope="module")
def bare_student(tmp_path_factory, llama3_student):
    """The Llama-3 student's files without its chat template: distill takes it from a flag."""
    from chat_templates import without_template

    return without_template(llama3_student[0], tmp_path_factory.mktemp("bare_llama3"))


@pytest.fixture(scope="module")
def cross_memorizer(tmp_path_factory, chat_store, bare_student):
    """The Llama-3 student trained across tokenizers (CE, its own template's answers) on 8 conversations."""
    from chat_templates import LLAMA3

    d = tmp_path_factory.mktemp("cross_memorizer")
    template = d / "llama3.jinja"
    template.write_text(LLAMA3)
    exclude = d / "exclude.txt"
    exclude.write_text("".join(f"{i}\n" for i in range(TRAINED, len(open_store(chat_store)))))
    run_cli("distill", "--logits-store", chat_store, "--model", bare_student, "--student-chat-template", template,
            "--loss", "ce", "--epochs", 80, "--batch-size", 8, "--lr", "3e-3", "--warmup-ratio", 0,
            "--exclude", exclude, "--eval-examples", 0, "--out", d / "model")
    return d / "model"


def test_prompts_are_the_models_rendering_and_suffixes_the_answers_bytes(chat_store, chat_teacher_dir, llama3_student):
    from chat_templates import LLAMA3
    from kdstream.distill.cross_conversations import stored_messages
    from kdstream.extract.conversation_cross import cross_windows
    from kdstream.extract.conversation_prompts import first_turns
    from kdstream.extract.cross_tokenizer import ByteJudge
    from kdstream.text.chat import target_ranges
    from kdstream.text.tokenizers import load_tokenizer

    teacher, (_, tok) = load_tokenizer(chat_teacher_dir), llama3_student
    store = open_store(str(chat_store))
    rows = store.read(0, len(store), ("input_ids", "example_id", "length", "topk_len", "doc_index"))
    turns = first_turns(rows, 6)
    messages = stored_messages(store)
    w = cross_windows(ByteJudge(teacher, tok), LLAMA3, messages, False, rows, turns, 6, None)
    assert len(w.judged) == len(turns) > 0
    for r, p, prompt, suffix in zip(turns.row.tolist(), turns.prompt_len.tolist(), w.prompts, w.suffix):
        conv = messages[int(rows["doc_index"][r])]
        text, ranges = target_ranges(tok, LLAMA3, conv)
        assert tok.decode(prompt, skip_special_tokens=False) == text[: ranges[0][0]]
        assert text[: ranges[0][0]].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        answer = next(m["content"] for m in conv if m["role"] == "assistant").strip()
        # the teacher's first 6 tokens of the answer, as bytes, less the closing <|im_end|>
        assert answer.encode().startswith(suffix) and len(suffix) > 0 and b"<|im_end|>" not in suffix
        assert suffix == teacher.decode(rows["input_ids"][r][p : p + 6], skip_special_tokens=True).encode()
    # a context too short for a prompt plus its bound: skipped, counted by reason
    short = cross_windows(ByteJudge(teacher, tok), LLAMA3, messages, False, rows, turns, 6, 8)
    assert set(short.skip) == {"context"}


def test_a_sentencepiece_students_suffix_starts_with_the_lead_it_was_trained_to_write(chat_store, chat_teacher_dir,
                                                                                      docs):
    """A student whose tokens prepend "▁" to the answer writes " Answer…": the suffix it is judged
    on starts with that space, as the tokens distill trained it on spell it."""
    from chat_templates import INST
    from kdstream.distill.cross_conversations import stored_messages
    from kdstream.extract.conversation_cross import cross_windows
    from kdstream.extract.conversation_prompts import first_turns
    from kdstream.extract.cross_tokenizer import ByteJudge
    from kdstream.text.tokenizers import load_tokenizer, train_sentencepiece_style_tokenizer

    teacher, tok = load_tokenizer(chat_teacher_dir), train_sentencepiece_style_tokenizer(docs[:60], 600)
    store = open_store(str(chat_store))
    rows = store.read(0, len(store), ("input_ids", "example_id", "length", "topk_len", "doc_index"))
    turns = first_turns(rows, 6)
    judge = ByteJudge(teacher, tok)
    w = cross_windows(judge, INST, stored_messages(store), False, rows, turns, 6, None)
    assert len(w.judged) == len(turns) > 0
    for r, p, prompt, suffix in zip(turns.row.tolist(), turns.prompt_len.tolist(), w.prompts, w.suffix):
        assert tok.decode(prompt, skip_special_tokens=False).endswith(" [/INST]")
        content = teacher.decode(rows["input_ids"][r][p : p + 6], skip_special_tokens=True).encode()
        assert suffix == b" " + content  # the "▁" its first answer token starts with
        answer = judge.aligner.align_rows([rows["input_ids"][r][p : p + 6]]).alignments()[0]
        assert judge.model_text(answer.student_ids).startswith(suffix)


@pytest.mark.slow
def test_the_student_reproduces_only_the_answers_it_was_trained_on(tmp_path, cross_memorizer, chat_store):
    from chat_templates import LLAMA3

    # distill saved the template the student learned with its tokenizer: extract-eval needs no flag
    saved = json.loads((cross_memorizer / "tokenizer_config.json").read_text()).get("chat_template") \
        or (cross_memorizer / "chat_template.jinja").read_text()
    assert saved == LLAMA3
    run_cli("extract-eval", "--model", cross_memorizer, "--logits-store", chat_store, *SUFFIX, "--out", tmp_path / "e")
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    r = pq.read_table(tmp_path / "e" / "results.parquet").to_pandas().set_index("example_id")
    memorized = set(r.index[r["exact_match"]])
    assert summary["mode"] == "cross_tokenizer" and summary["match_on"] == "bytes"
    assert memorized <= set(range(TRAINED)) and len(memorized) >= TRAINED - 2, memorized
    c = summary["conversations"]
    assert c["read"] == len(open_store(chat_store)) == c["judged"] + sum(c["skipped"].values())
    assert c["judged"] == int(r["skip_reason"].isna().sum()) and summary["memorized"] == len(memorized)
    assert summary["skipped_examples"] == {k: c["skipped"].get(k, 0) for k in summary["skipped_examples"]}
    for _, row in r[r["exact_match"]].iterrows():  # what it generated spells the answer's first bytes
        assert row["generated_bytes"].startswith(row["suffix_bytes"])
    # two shards merged give the same verdicts and counts
    shards = store_eval_shards(chat_store, tmp_path / "shards", 2, "--model", cross_memorizer, *SUFFIX)
    run_cli("eval", "merge", *shards, "--out", tmp_path / "merged")
    merged = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert merged["conversations"] == c and merged["memorized"] == summary["memorized"]
    assert merged["skipped_examples"] == summary["skipped_examples"] and merged["mode"] == "cross_tokenizer"


def test_what_a_cross_tokenizer_evaluation_cannot_do_is_refused_in_one_line(tmp_path, chat_store, cross_memorizer,
                                                                            teacher_store):
    from chat_templates import without_template

    bare = without_template(cross_memorizer, tmp_path / "bare")  # the trained student, its template taken away
    args = ("extract-eval", "--logits-store", chat_store, "--backend", "hf", "--out", tmp_path / "e")
    proc = run_cli(*args, "--model", bare, check=False)
    assert proc.returncode == 2 and "pass --chat-template FILE" in one_line_error(proc)
    proc = run_cli(*args, "--model", cross_memorizer, "--method", "fast", check=False)
    assert "use --method generate" in one_line_error(proc)
    proc = run_cli("extract-eval", "--logits-store", teacher_store, "--model", cross_memorizer, "--chat-template",
                   cross_memorizer.parent / "llama3.jinja", "--out", tmp_path / "e", check=False)
    assert "--chat-template renders a conversation store's prompts" in one_line_error(proc)
    assert not (tmp_path / "e").exists()
