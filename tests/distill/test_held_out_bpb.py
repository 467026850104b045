"""distill's held-out bits per byte (held_out.py): the student's CE over the held-out positions in
bits per UTF-8 byte of the text they predict, same-tokenizer and across tokenizers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import NUM_EXAMPLES, SEQ_LEN, run_cli
from kdstream.text.token_bytes import token_byte_lengths

pytestmark = pytest.mark.slow
HELD_OUT = 4


def _held_out_ids(store_path) -> np.ndarray:
    from kdstream.storage import open_store

    return open_store(str(store_path)).read(NUM_EXAMPLES - HELD_OUT, NUM_EXAMPLES, ("input_ids",))["input_ids"]


def test_same_tokenizer_summary_reports_bits_per_byte(tmp_path, teacher_store, student_init_dir, tokenizer):
    out = tmp_path / "run"
    run_cli("distill", "--logits-store", teacher_store, "--model", student_init_dir, "--loss", "ce", "--epochs", 1,
            "--batch-size", 8, "--lr", "1e-3", "--eval-examples", HELD_OUT, "--out", out)
    summary = json.loads((out / "train_summary.json").read_text())
    ids = _held_out_ids(teacher_store)  # (4, L): the last rows are the held-out ones
    tokens, num_bytes = HELD_OUT * (SEQ_LEN - 1), int(token_byte_lengths(tokenizer, ids[:, 1:]).sum())
    assert summary["held_out_tokens"] == tokens and summary["held_out_bytes"] == num_bytes
    nats_per_token = summary["held_out_nats_per_token"]
    assert summary["held_out_bits_per_byte"] == pytest.approx(nats_per_token * tokens / (num_bytes * math.log(2)),
                                                              rel=1e-9)
    # the nats: the saved model's own CE on those rows (transformers, fp32)
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        x = torch.as_tensor(ids)
        logp = net(input_ids=x).logits[:, :-1].float().log_softmax(-1)
        ce = -logp.gather(-1, x[:, 1:, None]).mean().item()
    assert nats_per_token == pytest.approx(ce, rel=1e-4)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["eval_bits_per_byte"] == summary["held_out_bits_per_byte"]
    assert records[-1]["eval_ce"] == pytest.approx(nats_per_token, rel=1e-9)


def test_cross_tokenizer_run_reports_bits_per_byte_of_the_same_text(tmp_path_factory, tmp_path, teacher_store,
                                                                    teacher_dir, tokenizer, docs):
    """A student with a SentencePiece-style tokenizer: its own tokens of the held-out text, the
    same text's bytes, less each example's first student token (no log-prob) and a character cut at an edge."""
    from helpers import make_gpt_neox
    from kdstream.text.tokenizers import train_sentencepiece_style_tokenizer

    d = tmp_path_factory.mktemp("sp_student")
    tok = train_sentencepiece_style_tokenizer(docs, 400)
    student = make_gpt_neox(d, tok, layers=1, vocab=len(tok), seed=5)
    out = tmp_path / "run"
    run_cli("distill", "--logits-store", teacher_store, "--model", student, "--teacher-tokenizer", teacher_dir,
            "--cross-tokenizer", "alm", "--epochs", 1, "--batch-size", 8, "--eval-examples", HELD_OUT,
            "--out", out)
    summary = json.loads((out / "train_summary.json").read_text())
    assert sum(summary["skipped_examples"].values()) == 0
    teacher_bytes = int(token_byte_lengths(tokenizer, _held_out_ids(teacher_store)).sum())  # every token's
    assert teacher_bytes - HELD_OUT * 32 <= summary["held_out_bytes"] <= teacher_bytes
    assert summary["held_out_tokens"] > 0 and summary["held_out_bits_per_byte"] == pytest.approx(
        summary["held_out_nats_per_token"] * summary["held_out_tokens"] / (summary["held_out_bytes"] * math.log(2)),
        rel=1e-9)
