"""`kdstream reproduce --find-regime` end to end with micro models: a search stopped by
--max-points, resumed, its teacher trained once; a search that finds the regime, runs the whole
study there, and whose saved config reproduces the point's counts; bad input."""
from __future__ import annotations

import json

import pytest
import yaml

from helpers import run_cli

# tests/study/test_calibrate.py's reduced shape on 200 windows (the search needs 70). Measured
# (seed 0): at 15 / 15 epochs teacher 17, baseline 28, student 13; at 15 / 10, 17 / 10 / 2.
BASE = """\
examples: 200
seq_len: 64
tokenizer_vocab: 1024
teacher_model: micro-teacher
student_model: micro-student
teacher_epochs: {teacher}
student_epochs: {student}
batch_size: 8
top_k: 8
prefix_len: 16
suffix_len: 16
eval_method: fast
eval_backend: hf
canary_counts: [1, 4]
canaries_per_count: 1
canary_prefix_len: 8
canary_suffix_len: 8
classify_repeats: 5
teacher_lr: 0.003
lr: 0.003
precompute_args: [--dtype, float32, --backend, hf]
"""
ROLES = ("teacher", "baseline", "student")


def _config(tmp_path, teacher: int, student: int):
    path = tmp_path / "base.yaml"
    path.write_text(BASE.format(teacher=teacher, student=student))
    return path


def _lines(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("[find-regime]")]


@pytest.mark.slow
def test_max_points_stops_with_the_best_point_a_rerun_resumes_and_the_teacher_trains_once(tmp_path):
    config, out = _config(tmp_path, 15, 15), tmp_path / "search"
    proc = run_cli("reproduce", "--find-regime", "--config", config, "--max-points", 2, "--out", out,
                   check=False, timeout=1800)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = _lines(proc)
    # 15 / 15: the baseline recites more than the teacher, so the student's epochs go down
    assert lines[0].startswith("[find-regime] point 1: teacher_epochs-15__student_epochs-15__temperature-2.0: ")
    assert "is not below the teacher's" in lines[0] and "student epochs 15 -> " in lines[0]
    assert lines[1].startswith("[find-regime] point 2: teacher_epochs-15__student_epochs-")
    assert lines[-1].startswith("[find-regime] no point in the regime: stopped after 2 points (--max-points), "
                                "the next being ")
    assert "best point teacher_epochs-15__" in lines[-1] and len(lines) == 3
    record = json.loads((out / "search" / "search.json").read_text())
    first, second = (out / "search" / row["point"] / "seed-0" for row in record["points"])
    assert record["found"] is None and record["stopped"] in lines[-1]
    assert record["points"][1]["shared_teacher_with"] == first.parent.name
    # the teacher trained once: one teacher stage ran, the second point's teacher and store are links
    assert proc.stderr.count("teacher (CE): kdstream distill") == 1
    assert proc.stderr.count("precompute: kdstream precompute-logits") == 1
    for part in ("teacher/model.safetensors", "eval/teacher/results.parquet"):
        assert (first / part).stat().st_ino == (second / part).stat().st_ino, part
    assert json.loads((second / "stage_seconds.json").read_text())["teacher (CE)"] == 0.0
    assert not (out / "study.md").exists()  # no point found: no study

    # a rerun resumes: no stage runs again, the same points and lines
    again = run_cli("reproduce", "--find-regime", "--config", config, "--max-points", 2, "--out", out,
                    check=False, timeout=600)
    assert again.returncode == 1 and "kdstream distill" not in again.stderr
    assert "kdstream extract-eval" not in again.stderr and _lines(again) == lines
    assert json.loads((out / "search" / "search.json").read_text())["points"] == record["points"]


# the point the search finds when started there (measured: 17 / 10 / ... at seed 0, see above)
FOUND = (15, 12)


@pytest.mark.slow
def test_the_search_runs_the_study_at_the_found_point_and_its_config_reproduces_the_counts(tmp_path):
    from kdstream.analysis.compare import memorized_ids

    config, out = _config(tmp_path, *FOUND), tmp_path / "search"
    proc = run_cli("reproduce", "--find-regime", "--config", config, "--out", out, timeout=1800)
    lines = _lines(proc)
    assert "-> in the regime: teacher " in lines[-2] and lines[-1].startswith("[find-regime] the whole study at ")
    record = json.loads((out / "search" / "search.json").read_text())
    row = record["points"][-1]
    assert record["found"] == row["point"] and row["student_min"] >= 5
    c = row["memorized"]
    assert c["teacher"] > c["baseline"] > c["student"] >= 5 and c["teacher"] <= 0.1 * row["examples"]
    # the whole study at that point, in OUT, as `reproduce --out OUT` writes it
    study = json.loads((out / "study.json").read_text())
    assert (out / "study.md").exists() and study["seeds"][0]["memorized"] == {r: int(c[r]) for r in ROLES}
    assert (out / "seed-0" / "classify").is_dir()  # the classifier had its windows
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert {k: saved[k] for k in row["settings"]} == row["settings"]

    # the saved config reruns the point exactly: a fresh directory, the same memorized windows
    again = tmp_path / "again"
    run_cli("reproduce", "--config", out / "config.yaml", "--out", again, timeout=1800)
    figures = json.loads((again / "seed-0" / "figures.json").read_text())
    assert figures["memorized"] == study["seeds"][0]["memorized"]
    for role in ROLES:
        assert memorized_ids(again / "seed-0" / "eval" / role) == memorized_ids(out / "seed-0" / "eval" / role)


def test_a_corpus_too_small_for_the_band_is_one_line_saying_how_many_windows(tmp_path):
    corpus = tmp_path / "small.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i}: " + "some words here " * 20}) + "\n"
                              for i in range(10)))
    config = _config(tmp_path, 15, 15)
    config.write_text(config.read_text().replace("examples: 200", f"examples: 200\ndataset: {corpus}")
                      .replace("canary_counts: [1, 4]", "canary_counts: []"))
    proc = run_cli("reproduce", "--find-regime", "--config", config, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"the corpus {corpus} gives " in proc.stderr and "--find-regime needs at least 70 windows" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_too_few_examples_is_one_line_naming_the_floor(tmp_path):
    proc = run_cli("reproduce", "--find-regime", "--config", _config(tmp_path, 15, 15), "--examples", 50,
                   "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "examples 50: --find-regime needs at least 70 windows" in proc.stderr, proc.stderr
    assert "set examples to 70 or more" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--calibrate"], "--find-regime and --calibrate are two searches: pass one of them"),
    (["--teacher-epochs", "5"], "--teacher-epochs is searched by --find-regime: drop the flag"),
    (["--student-epochs", "5", "--teacher-epochs", "3"], "--student-epochs, --teacher-epochs is searched"),
])
def test_find_regime_with_calibrate_or_a_searched_knob_fixed_is_refused(tmp_path, flags, message):
    proc = run_cli("reproduce", "--find-regime", *flags, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
