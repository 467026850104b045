"""distill from a store with a student of another tokenizer (alignment + ALM / exact losses),
end to end through the CLI, and its one-line refusals."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import losses, make_gpt_neox, one_line_error, run_cli, without_tokenizer


@pytest.fixture(scope="module")
def other_student(tmp_path_factory, docs):
    """A student whose BPE has another vocabulary (trained on the same documents)."""
    from kdstream.text.tokenizers import train_bpe_tokenizer

    d = tmp_path_factory.mktemp("other_student")
    tok = train_bpe_tokenizer(docs, 400, d / "tok")
    return make_gpt_neox(d / "model", tok, layers=1, vocab=400, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["alm+exact", "alm"])
def test_a_student_with_another_tokenizer_trains_from_the_store(teacher_store, teacher_dir, other_student, tmp_path,
                                                                 mode):
    out = tmp_path / "out"
    run_cli("distill", "--logits-store", teacher_store, "--model", other_student, "--teacher-tokenizer", teacher_dir,
            "--cross-tokenizer", mode, "--epochs", 2, "--batch-size", 8, "--lr", "1e-3", "--eval-examples", 4,
            "--alpha-ce", 0.1, "--out", out)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["cross_tokenizer"] == mode
    assert set(summary["skipped_examples"]) == {"invalid_utf8", "no_round_trip", "empty"}
    steps = losses(out)
    assert len(steps) == summary["steps"] > 0 and all(math.isfinite(x) for x in steps)
    assert math.isfinite(summary["final_eval_loss"])
    assert (out / "model.safetensors").is_file()


def test_cross_tokenizer_refusals(teacher_store, teacher_dir, other_student, student_init_dir, tmp_path):
    base = ["distill", "--logits-store", teacher_store, "--model", other_student, "--out", tmp_path / "out",
            "--epochs", 1]
    # a store written before stores carried their tokenizer, and no --teacher-tokenizer
    old = without_tokenizer(teacher_store, tmp_path / "old.zarr")
    err = one_line_error(run_cli(*base[:2], old, *base[3:], check=False))
    assert "carries no tokenizer" in err and "--teacher-tokenizer DIR" in err
    err = one_line_error(run_cli(*base, "--teacher-tokenizer", other_student, check=False))
    assert "is not the tokenizer of" in err
    err = one_line_error(run_cli(*base, "--cross-tokenizer", "bytes", check=False))
    assert "--cross-tokenizer bytes is unknown" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_same_tokenizer_with_an_explicit_cross_loss_runs(teacher_store, student_init_dir, tmp_path):
    """One chunk per token: alm on the teacher's own tokenizer (its unit tests check the reduction)."""
    run_cli("distill", "--logits-store", teacher_store, "--model", student_init_dir, "--cross-tokenizer", "alm",
            "--epochs", 1, "--batch-size", 8, "--out", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["cross_tokenizer"] == "alm" and sum(summary["skipped_examples"].values()) == 0


def test_the_store_s_own_tokenizer_serves_a_student_of_another(teacher_store, other_student, tmp_path):
    """No --teacher-tokenizer: the tokenizer the store carries (storage/tokenizer_files.py) aligns."""
    out = tmp_path / "out"
    run_cli("distill", "--logits-store", teacher_store, "--model", other_student, "--epochs", 1, "--batch-size", 12,
            "--out", out)  # 24 examples: 2 steps
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["cross_tokenizer"] == "alm+exact" and summary["steps"] == 2
    assert all(math.isfinite(x) for x in losses(out))


def test_ce_with_another_tokenizer_trains_on_the_student_s_own_tokens(teacher_store, other_student, tmp_path):
    """--loss ce across tokenizers (the cross-tokenizer study's baseline): the student's own tokens
    of the store's texts, no teacher term; the summary names the mode."""
    out = tmp_path / "out"
    run_cli("distill", "--logits-store", teacher_store, "--model", other_student, "--loss", "ce", "--epochs", 1,
            "--batch-size", 12, "--eval-examples", 4, "--out", out)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["cross_tokenizer"] == "ce" and summary["steps"] == 2  # 20 examples train
    assert math.isfinite(summary["held_out_bits_per_byte"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["kd"] is None and r["loss"] == pytest.approx(r["ce"]) for r in records)


def test_ce_terms_across_tokenizers_are_the_student_s_own_ce():
    """cross_terms in CE-only mode: loss = the CE term of any cross mode, kd = 0."""
    import torch

    from kdstream.distill.aligned_batch import aligned_example, collate_aligned
    from kdstream.distill.cross_tokenizer import CE_ONLY, cross_terms
    from kdstream.text.align import Alignment

    # an alignment of 5 one-byte tokens on each side, 5 chunks (one per token, the first unusable)
    spans = np.stack([np.arange(5), np.arange(1, 6)], 1)
    a = Alignment("abcde", np.array([3, 1, 4, 1, 5]), spans, spans, np.arange(5), np.arange(5), spans, spans,
                  np.arange(6), np.array([False, True, True, True, True]))
    batch = collate_aligned([aligned_example(a, np.zeros(4))], pad_id=0)
    logits = torch.randn(1, 5, 8)
    got = cross_terms(logits, batch, mode=CE_ONLY, loss="forward_kl", temperature=2.0, tail="bucket", beta=0.5,
                      alpha_ce=0.0)
    ref = cross_terms(logits, batch, mode="alm", loss="forward_kl", temperature=2.0, tail="bucket", beta=0.5,
                      alpha_ce=1.0)
    assert got[0] == pytest.approx(float(ref[1])) and got[2] == 0.0


def _two_to_one_alignment():
    """Teacher "ab" "c" "de", student "a" "b" "c" "d" "e": chunks [0,2) (unusable: token 0), [2,3)
    one token a side, [3,5) one teacher token against two student ones."""
    from kdstream.text.align import Alignment

    t_spans = np.array([[0, 2], [2, 3], [3, 5]])
    s_spans = np.stack([np.arange(5), np.arange(1, 6)], 1)
    return Alignment("abcde", np.array([3, 1, 4, 1, 5]), t_spans, s_spans, np.arange(3), np.array([0, 0, 1, 2, 2]),
                     np.array([[0, 1], [1, 2], [2, 3]]), np.array([[0, 2], [2, 3], [3, 5]]), np.array([0, 2, 3, 5]),
                     np.array([False, True, True]))


def test_same_token_exact_rows_are_the_one_token_chunks_and_the_rest_takes_ce():
    """--exact-rows same_token: an exact row only where both next tokens are the same bytes; the
    exact term averages the divergence there and the CE at every other real position."""
    import torch

    from kdstream.distill.aligned_batch import aligned_example, collate_aligned
    from kdstream.distill.cross_losses import exact_map_loss, student_token_logprobs
    from kdstream.distill.cross_tokenizer import cross_terms

    a = _two_to_one_alignment()
    topk_ids = np.array([[1, 2], [3, 4], [5, 6]])
    topk_lp = np.log(np.array([[0.5, 0.2], [0.6, 0.3], [0.4, 0.4]], np.float32))
    args = (a, np.zeros(2), topk_ids, topk_lp, np.arange(8))
    aligned, same = aligned_example(*args), aligned_example(*args, same_token=True)
    assert aligned.exact_rows.tolist() == [1, 2] and same.exact_rows.tolist() == [1]
    assert same.exact_ids.tolist() == [[1, 2]]  # the teacher's row 0 predicts its token 1, "c"
    batch = collate_aligned([same], pad_id=0)
    logits = torch.randn(1, 5, 8)
    kw = dict(loss="forward_kl", temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.0)
    got = cross_terms(logits, batch, mode="exact", exact_rows="same_token", **kw)
    lp = student_token_logprobs(logits, batch.input_ids)[0]  # (4,)
    kd = exact_map_loss(logits, batch, kind="forward_kl", temperature=2.0)
    assert float(got[0]) == pytest.approx(float(kd - lp[0] - lp[2] - lp[3]) / 4, rel=1e-6)
    plain = cross_terms(logits, batch, mode="exact", **kw)  # the default: the mean over exact rows alone
    assert float(plain[0]) == pytest.approx(float(kd), rel=1e-6)


def test_a_piece_start_after_a_special_token_maps_the_teachers_top_k_with_the_students_lead(teacher_store, docs):
    """A document after <|endoftext|> starts a piece: a SentencePiece-style student's first token
    there is "▁Word" where the teacher's is "Word", so the exact row predicting it maps the
    teacher's top-k to "▁"-led student tokens; every other row maps as before."""
    from kdstream.distill.cross_tokenizer import CrossTargets
    from kdstream.storage import open_store
    from kdstream.storage.tokenizer_files import teacher_tokenizer
    from kdstream.text.tokenizers import train_sentencepiece_style_tokenizer

    store = open_store(str(teacher_store))
    cross = CrossTargets.build(teacher_tokenizer(store, None, "no tokenizer"),
                               train_sentencepiece_style_tokenizer(docs[:60], 600), "alm+exact", "prefix")
    out = cross(store.read(0, len(store), ("input_ids", "target_logprob", "topk_ids", "topk_logprobs")))
    spelled, lengths = cross.aligner.s.tokens, cross.aligner.s.lengths
    led = plain = 0
    for e in out["aligned"]:
        for row, ids, lp in zip(e.exact_rows.tolist(), e.exact_ids, e.exact_logprobs):
            nxt = e.student_ids[row + 1]
            mapped = ids[np.isfinite(lp)].tolist()
            if lengths[nxt] > e.student_bytes[row + 1]:  # its lead byte is not the text's
                led += 1
                bad = [spelled[i] for i in mapped if not spelled[i].startswith(b" ")]
                assert not bad, bad
                assert len(set(mapped)) == len(mapped)
            else:
                plain += 1
    assert led > 0 and plain > 10 * led
