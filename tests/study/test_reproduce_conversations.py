"""`kdstream reproduce` on a chat dataset: the protocol on conversations, end to end through the CLI
with micro models (study/conversations.py says what changes)."""
from __future__ import annotations

import json

import pytest

from helpers import one_line_error, run_cli
from kdstream.storage import open_store

# The session's 40 conversations (one without an answer: 39 examples), cut at 96 tokens. Measured:
# teacher 39, baseline 30, student 25 of 39 memorized, so the classifier, the filter and the
# re-distilled student all run, in ~1 min. Canaries are left at their default to show they are skipped.
REDUCED_CHAT = """\
dataset: {dataset}
examples: 40
seq_len: 96
tokenizer_vocab: 1024
teacher_model: micro-teacher
student_model: micro-student
teacher_epochs: 30
student_epochs: 22
batch_size: 8
top_k: 8
suffix_len: 8
eval_method: fast
eval_backend: hf
arms: [hard]
classify_repeats: 5
teacher_lr: 0.003
lr: 0.003
"""


@pytest.mark.slow
def test_reduced_study_on_conversations(tmp_path, chat_file):
    from kdstream.analysis.compare import memorized_ids
    from kdstream.text.chat import CHATML_SPECIALS
    from kdstream.text.tokenizers import load_tokenizer

    config = tmp_path / "chat.yaml"
    config.write_text(REDUCED_CHAT.format(dataset=chat_file))
    out = tmp_path / "study"
    proc = run_cli("reproduce", "--config", config, "--out", out, timeout=900)
    assert "no canaries are planted" in proc.stderr
    md = (out / "study.md").read_text()
    assert "39 conversations of at most 96 tokens" in md and "the first 8 tokens of its first answer" in md
    assert "No canaries on conversations" in md
    # the tiny models' tokenizer: trained on the messages, with ChatML's tokens and template
    tok = load_tokenizer(out / "tokenizer")
    assert "<|im_start|>" in tok.chat_template and all(s in tok.get_vocab() for s in CHATML_SPECIALS)
    seed = out / "seed-0"
    store = open_store(str(seed / "teacher.zarr"))
    assert store.conversations and len(store) == 39
    assert json.loads((seed / "teacher" / "train_summary.json").read_text())["examples"] == 39  # on the conversations
    for role in ("teacher", "baseline", "student", "student_hard", "student_filtered"):
        s = json.loads((seed / "eval" / role / "summary.json").read_text())
        assert (s["prefix"], s["prefix_len"], s["examples"]) == ("conversation", None, 39), role
    assert not (seed / "eval-canaries").exists() and not (seed / "canaries.json").exists()

    study = json.loads((out / "study.json").read_text())
    figs = study["seeds"][0]
    assert figs["conversations"] is True and figs["canaries"] is None
    counts = {role: len(memorized_ids(seed / "eval" / role)[0]) for role in ("teacher", "baseline", "student")}
    assert figs["memorized"] == counts
    assert counts["teacher"] > counts["baseline"] > counts["student"] >= 5, counts  # so the classifier runs
    assert figs["classifier"] is not None and figs["filter"] is not None
    assert figs["arms"]["student_hard"]["memorized"] == len(memorized_ids(seed / "eval" / "student_hard")[0])

    again = run_cli("reproduce", "--config", config, "--out", out, timeout=300)  # every stage is done: skipped
    assert "already done, skipping" in again.stderr and "student (KD)" not in again.stderr.replace(
        "student (KD): already done", "")


def test_what_the_protocol_does_not_do_on_conversations_is_refused_in_one_line(tmp_path, chat_file):
    config = tmp_path / "study.yaml"
    config.write_text(f"dataset: {chat_file}\nstudent_tokenizer: sentencepiece-600\n")
    proc = run_cli("reproduce", "--config", config, "--out", tmp_path / "study", check=False)
    assert "cannot yet score a student of another tokenizer on them" in one_line_error(proc)
    assert not (tmp_path / "study").exists()
    config.write_text(f"dataset: {chat_file}\n")
    proc = run_cli("reproduce", "--config", config, "--find-regime", "--out", tmp_path / "search", check=False)
    assert "--find-regime plans its points on a text corpus" in one_line_error(proc)
    assert not (tmp_path / "search").exists()
