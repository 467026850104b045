"""`kdstream compare` (analysis/compare_run.py) on hand-built eval and features directories."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from analysis_dirs import synthetic_dirs, write_eval
from click.testing import CliRunner

from kdstream.analysis.compare_run import compare_evals, venn_regions, write_comparison
from kdstream.cli.analysis import compare
from kdstream.errors import KdError

T = set(range(10))  # 0..9: the teacher's memorized ids (the `evals` fixture)
B = set(range(5, 13))  # 5..12
S = {3, 8, 9, 10, 13}


def test_compare_counts_and_venn_by_hand(evals, tmp_path):
    cmp = compare_evals(*evals)
    assert cmp["examples"] == 20
    assert cmp["memorized"] == {"teacher": 10, "baseline": 8, "student": 5}
    assert cmp["student_and_baseline"] == 3  # 8, 9, 10
    assert cmp["student_and_teacher"] == 3  # 3, 8, 9
    assert cmp["all_three"] == 2  # 8, 9
    assert cmp["teacher_only"] == 5  # teacher ∖ baseline: 0..4
    assert cmp["teacher_only_inherited_by_student"] == 1  # 3
    assert cmp["student_over_baseline"] == pytest.approx(5 / 8)
    assert cmp["venn"] == {
        "teacher_only": 4,  # 0, 1, 2, 4
        "baseline_only": 2,  # 11, 12
        "student_only": 1,  # 13
        "teacher_baseline_only": 3,  # 5, 6, 7
        "teacher_student_only": 1,  # 3
        "baseline_student_only": 1,  # 10
        "all_three": 2,  # 8, 9
    }
    assert sum(cmp["venn"].values()) == cmp["union"] == 14
    assert cmp["student_memorized_by_both_others"] == pytest.approx(2 / 5)

    paths = write_comparison(cmp, tmp_path / "cmp")
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["venn"]["teacher_student_only"] == 1
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| teacher ∩ student, not baseline | 1 |" in md and "| student | 5 / 20 | 25.00% |" in md
    assert "40.0%" in md and set(paths) == {"comparison.json", "comparison.md"}


def test_venn_when_student_memorized_nothing(tmp_path):
    ids = range(6)
    cmp = compare_evals(write_eval(tmp_path / "t", ids, {0}), write_eval(tmp_path / "b", ids, set()),
                        write_eval(tmp_path / "s", ids, set()))
    assert np.isnan(cmp["student_memorized_by_both_others"])
    write_comparison(cmp, tmp_path / "o")
    assert json.loads((tmp_path / "o" / "comparison.json").read_text())["student_memorized_by_both_others"] is None
    assert venn_regions({1}, {1}, {1})["all_three"] == 1


def test_compare_errors(tmp_path, evals):
    with pytest.raises(KdError, match="not found"):
        compare_evals(tmp_path / "missing", evals[1], evals[2])
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdError, match="results.parquet"):
        compare_evals(evals[0], tmp_path / "empty", evals[2])
    other = write_eval(tmp_path / "other", range(5, 25), S)
    with pytest.raises(KdError, match="same store"):
        compare_evals(evals[0], evals[1], other)
    _, teacher, _, _ = synthetic_dirs(tmp_path / "syn")  # features of ids 500..699, not 0..19
    with pytest.raises(KdError, match="have no teacher features"):
        compare_evals(*evals, {"teacher": teacher})


def test_compare_feature_summaries_memorized_vs_not(tmp_path):
    student, teacher, baseline, positives = synthetic_dirs(tmp_path)
    cmp = compare_evals(student, student, student, {"teacher": teacher, "baseline": baseline})
    tf = pq.read_table(teacher / "features.parquet").to_pandas().set_index("example_id")
    mem = tf.index.isin(list(positives))
    got = cmp["features"]["teacher"]["student"]
    assert got["memorized"]["examples"] == 30 and got["not_memorized"]["examples"] == 170
    assert got["memorized"]["median"]["zlib_entropy"] == float(tf.loc[mem, "zlib_entropy"].median())
    assert got["not_memorized"]["mean"]["ppl"] == pytest.approx(tf.loc[~mem, "ppl"].mean(), rel=1e-12)
    assert got["memorized"]["median"]["ppl"] < got["not_memorized"]["median"]["ppl"]  # memorized = easy
    assert set(cmp["features"]) == {"teacher", "baseline"} and set(got["memorized"]["mean"]) == {
        "ppl", "teacher_kl", "zlib_entropy"}
    write_comparison(cmp, tmp_path / "o")
    md = (tmp_path / "o" / "comparison.md").read_text()
    assert f"| zlib_entropy | {got['memorized']['median']['zlib_entropy']:.4g} |" in md



def test_compare_through_click(tmp_path, evals):
    """The click command prints the table and the JSON summary; errors stay KdError."""
    runner = CliRunner()

    r = runner.invoke(compare, [*map(str, evals), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    assert "| teacher | 10 / 20 | 50.00% |" in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1])["venn"]["all_three"] == 2
    assert (tmp_path / "cmp" / "comparison.json").is_file() and (tmp_path / "cmp" / "comparison.md").is_file()

    r = runner.invoke(compare, [str(tmp_path / "missing"), *map(str, evals[1:]), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and isinstance(r.exception, KdError)
    assert "not found" in str(r.exception)
