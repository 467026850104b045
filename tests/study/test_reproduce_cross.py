"""A reduced study whose baseline and students have another tokenizer than the teacher's
(StudyConfig.student_tokenizer), end to end through the CLI: `kdstream reproduce` with micro models."""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import run_cli

# Cheap: 16 examples (stage start-up dominates: training itself takes seconds, so the epochs are
# many), no canaries (their cross-tokenizer extraction is that of tests/extract, --dataset with
# --teacher-tokenizer). Measured: teacher 16 of 16, baseline and student 8 of 16 memorized, so the
# classifier (byte features), the filter and the re-distilled student all run, in ~3 min. The
# corpus is pinned: on the first 16 windows of the embedded default (demo+licenses:0.3) the
# classifier flags every example and there is no filtered student to train.
REDUCED_CROSS = """\
dataset: demo+licenses:0.4
examples: 16
seq_len: 64
tokenizer_vocab: 1024
student_tokenizer: sentencepiece-600
cross_tokenizer: alm
teacher_model: micro-teacher
student_model: micro-student
teacher_epochs: 40
student_epochs: 40
batch_size: 8
top_k: 8
prefix_len: 16
suffix_len: 16
eval_method: fast
eval_backend: hf
canary_counts: []
classify_repeats: 5
teacher_lr: 0.003
lr: 0.003
"""


@pytest.mark.slow
def test_reduced_study_across_tokenizers(tmp_path):
    from kdstream.analysis.classify import write_exclude_list
    from kdstream.analysis.compare import memorized_ids
    from kdstream.text.tokenizers import load_tokenizer, tokenizer_fingerprint

    config = tmp_path / "reduced.yaml"
    config.write_text(REDUCED_CROSS)
    out = tmp_path / "study"
    proc = run_cli("reproduce", "--config", config, "--out", out, timeout=900)
    assert "| finding | paper | this run | 95% interval (counts) | criterion | verdict |" in proc.stdout
    seed = out / "seed-0"
    # the students start from the trained SentencePiece-style tokenizer, the teacher from the BPE
    student_tok, teacher_tok = load_tokenizer(out / "init" / "student"), load_tokenizer(out / "init" / "teacher")
    assert len(student_tok) == len(load_tokenizer(out / "student_tokenizer")) != len(teacher_tok)
    assert tokenizer_fingerprint(student_tok)["sha256"] != tokenizer_fingerprint(teacher_tok)["sha256"]
    assert json.loads((out / "init" / "student" / "config.json").read_text())["vocab_size"] == len(student_tok)

    def summary(*path: str) -> dict:
        return json.loads((seed.joinpath(*path)).read_text())

    # distill across tokenizers: CE on the baseline's own tokens, KD by the configured loss
    assert summary("baseline", "train_summary.json")["cross_tokenizer"] == "ce"
    assert summary("student", "train_summary.json")["cross_tokenizer"] == "alm"
    assert "cross_tokenizer" not in summary("teacher", "train_summary.json")
    # the teacher judged on its tokens, the baseline and the student on the suffix's bytes
    assert (summary("eval", "teacher", "summary.json")["mode"], summary("eval", "teacher", "summary.json")["match_on"]) \
        == ("same_tokenizer", "tokens")
    for role in ("baseline", "student"):
        s = summary("eval", role, "summary.json")
        assert (s["mode"], s["match_on"], s["examples"]) == ("cross_tokenizer", "bytes", 16), role
    assert summary("eval", "baseline", "features", "summary.json")["mode"] == "cross_tokenizer"

    study = json.loads((out / "study.json").read_text())
    figs = study["seeds"][0]
    for role in ("teacher", "baseline", "student"):  # the report's numbers are the eval directories'
        ids, n = memorized_ids(seed / "eval" / role)
        assert figs["memorized"][role] == len(ids) == study["aggregate"]["memorized"][role]["mean"] and n == 16
    assert 5 <= figs["memorized"]["student"] <= 11, figs["memorized"]  # so that the classifier runs
    facts = figs["student_tokenizer"]
    assert facts["student_vocab"] == len(student_tok)
    assert facts["distill"] == {"baseline": "ce", "student": "alm", "student_filtered": "alm"}
    assert facts["eval"]["student_filtered"]["match_on"] == "bytes" and facts["eval"]["teacher"]["match_on"] == "tokens"
    # the classifier read the byte-based features; the filtered student trained and was judged across tokenizers
    cls = json.loads((seed / "classify" / "classification.json").read_text())
    assert cls["features"] == ["teacher_bpb", "baseline_bpb", "teacher_baseline_llr", "zlib_entropy"]
    assert set(figs["classifier"]["coefficients"]) == set(cls["features"])
    excluded = {int(x) for x in (seed / "classify" / "exclude.txt").read_text().split()}
    filtered = summary("student_filtered", "train_summary.json")
    assert figs["filter"]["excluded"] == len(excluded) > 0 and filtered["examples"] == 16 - len(excluded)
    ids, _ = memorized_ids(seed / "eval" / "student_filtered")
    assert figs["filter"]["student_memorized_after"] == len(ids)
    md = (out / "study.md").read_text()
    assert "Student tokenizer differs from the teacher's**: `sentencepiece-600`" in md
    assert "on bytes" in md and "byte-based features" in md and "teacher–baseline LLR per byte" in md
    # a rerun skips every finished stage (the cross stages too)
    rerun = run_cli("reproduce", "--config", config, "--out", out)
    assert "kdstream distill" not in rerun.stderr and "kdstream features" not in rerun.stderr
    assert json.loads((out / "study.json").read_text())["aggregate"] == study["aggregate"]
    # a classifier that flags every example (what the first 16 windows of the default corpus give):
    # no filtered student to train, the filter's finding not testable, the study still finishes
    write_exclude_list(range(16), seed / "classify" / "exclude.txt")
    for path in (seed / "student_filtered", seed / "eval" / "student_filtered"):
        shutil.rmtree(path)
    rerun = run_cli("reproduce", "--config", config, "--out", out)
    assert "kdstream distill" not in rerun.stderr and not (seed / "student_filtered").exists()
    figs = json.loads((out / "study.json").read_text())["seeds"][0]
    assert figs["filter"] is None and figs["classifier"]["coefficients"]
    assert "not testable (the classifier flags every example: nothing left to re-distill on)" in rerun.stdout


def test_student_tokenizer_refusals(tmp_path):
    """One-line refusals before any stage runs."""
    from kdstream.errors import KdError
    from kdstream.study.config import StudyConfig
    from kdstream.study.student_tokenizer import check_spec

    with pytest.raises(KdError, match="cross_tokenizer 'bytes'"):
        StudyConfig(cross_tokenizer="bytes")
    with pytest.raises(KdError, match="neither sentencepiece-N, bpe-N"):
        check_spec("wordpiece-100", "micro-student", tiny=True)
    with pytest.raises(KdError, match="too small"):
        check_spec("bpe-100", "micro-student", tiny=True)
    with pytest.raises(KdError, match="needs a tiny student"):
        check_spec("bpe-1000", str(tmp_path), tiny=False)
    check_spec(None, str(tmp_path), tiny=False)
    check_spec("sentencepiece-2048", "micro-student", tiny=True)
