"""`kdstream report` (analysis/report.py + plots.py) over a tiny study: real store and features, hand-built evals."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from analysis_dirs import study_eval
from click.testing import CliRunner

from kdstream.analysis.compare_run import venn_regions
from kdstream.analysis.report import ReportOptions, run_report
from kdstream.cli.analysis import ANALYSIS_COMMANDS, classify, compare, features, report
from kdstream.errors import KdError


def test_the_four_analysis_commands_are_registered():
    assert ANALYSIS_COMMANDS == [features, compare, classify, report]


def _report_args(study, scored, out):
    t, b, s = study["evals"]
    return ["--teacher-eval", str(t), "--baseline-eval", str(b), "--student-eval", str(s), "--out", str(out)]


def _assert_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 15_000, (path, len(data))
    img = matplotlib.image.imread(path)  # (H, W, 4) floats
    assert img.shape[0] > 300 and img.shape[1] > 300 and img[..., :3].std() > 0.05


def test_report_over_a_tiny_study(study, scored, tmp_path):
    out = tmp_path / "report"
    args = [*_report_args(study, scored, out), "--teacher-features", str(scored[0]), "--baseline-features",
            str(scored[2]), "--classify", str(study["cls_dir"]), "--prefix-eval", f"student={study['student_p8']}"]
    r = CliRunner().invoke(report, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["auc_mean"] == study["cls"]["auc"]["mean"]
    names = {p.name for p in out.iterdir()}
    assert names == {"report.md", "report.json", "options.yaml", "venn.png", "zlib_entropy.png", "roc.png",
                     "rate_by_prefix_len.png", ".kdstream-output.json"}
    for png in ("venn.png", "zlib_entropy.png", "roc.png", "rate_by_prefix_len.png"):
        _assert_png(out / png)
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()

    # the same numbers as compare and classify write
    r = CliRunner().invoke(compare, [*map(str, study["evals"]), "--out", str(tmp_path / "cmp"), "--teacher-features",
                                     str(scored[0]), "--baseline-features", str(scored[2])])
    assert r.exit_code == 0, r.output
    assert rep["comparison"] == json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert rep["classifier"] == json.loads((study["cls_dir"] / "classification.json").read_text()) == study["cls"]
    t, b, s = study["sets"]
    assert rep["comparison"]["memorized"] == {"teacher": 12, "baseline": 10, "student": 6}
    assert rep["comparison"]["venn"] == venn_regions(t, b, s) and rep["notes"] == {}
    assert "| teacher | 12 / 24 | 50.00% |" in md and "| student | 6 / 24 | 25.00% |" in md
    for key, label in (("all_three", "teacher ∩ baseline ∩ student"), ("student_only", "student only")):
        assert f"| {label} | {rep['comparison']['venn'][key]} |" in md
    c = rep["classifier"]
    assert f"| auc | {c['auc']['mean']:.3f} | {c['auc']['sd']:.3f} |" in md
    assert f"threshold {c['filter']['threshold']:.4g} flags {c['filter']['flagged']} examples" in md

    # zlib entropy medians: the features' values over each model's memorized set
    # and the texts' lengths in bytes beside them
    frame = pq.read_table(scored[0] / "features.parquet").to_pandas().set_index("example_id")
    for role, mem in zip(("teacher", "baseline", "student"), (t, b, s)):
        want = float(np.median(frame["zlib_entropy"].loc[sorted(mem)]))
        length = float(np.median(frame["text_bytes"].loc[sorted(mem)]))
        assert rep["zlib_entropy"][role]["memorized"]["median"] == want
        assert rep["zlib_entropy"][role]["memorized"]["median_text_bytes"] == length > 0
        assert rep["zlib_entropy"][role]["memorized"]["examples"] == len(mem)
        assert f"| {role} | {len(mem)} | {want:.4g} |" in md and f" | {length:.4g} | " in md

    # prefix lengths: the teacher's by_prefix_len, the student's main eval + its --prefix-eval
    points = {(p["role"], p["prefix_len"]): (p["memorized"], p["rate"]) for p in rep["prefix_len"]["points"]}
    assert points == {("teacher", 8): (9, 9 / 24), ("teacher", 16): (12, 0.5), ("baseline", 16): (10, 10 / 24),
                      ("student", 8): (3, 3 / 24), ("student", 16): (6, 0.25)}
    assert "| teacher | 8 | 16 | 9 / 24 | 37.50% |" in md
    for png in rep["plots"].values():
        assert f"]({png})" in md


def test_report_without_optional_inputs_says_what_to_pass(study, scored, tmp_path):
    r = CliRunner().invoke(report, _report_args(study, scored, tmp_path / "r"))
    assert r.exit_code == 0, r.output
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.md", "report.json", "options.yaml", "venn.png",
                                                             "rate_by_prefix_len.png", ".kdstream-output.json"}
    md = (tmp_path / "r" / "report.md").read_text()
    assert "pass --classify DIR" in md and "pass --teacher-features DIR" in md
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["classifier"] is None and rep["zlib_entropy"] is None and rep["comparison"]["features"] == {}

    # a classify output from before heldout.parquet: numbers, no ROC, and the note says how to get it
    old = tmp_path / "old_cls"
    old.mkdir()
    (old / "classification.json").write_text((study["cls_dir"] / "classification.json").read_text())
    r = CliRunner().invoke(report, [*_report_args(study, scored, tmp_path / "r2"), "--classify", str(old)])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "r2" / "roc.png").exists()
    assert "rerun `kdstream classify`" in (tmp_path / "r2" / "report.md").read_text()


def test_report_errors_are_one_line(study, scored, tmp_path):
    from helpers import run_cli

    args = _report_args(study, scored, tmp_path / "r")
    args[1] = str(tmp_path / "missing")
    proc = run_cli("report", *args, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: teacher evaluation")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()

    clash = study_eval(tmp_path / "clash", study["ids"], set(study["ids"][:3].tolist()), prefix_len=8)
    with pytest.raises(KdError, match="teacher at prefix length 8"):  # by_prefix_len says 9 memorized
        run_report(ReportOptions(teacher_eval=str(study["evals"][0]), baseline_eval=str(study["evals"][1]),
                                 student_eval=str(study["evals"][2]), out=str(tmp_path / "r3"),
                                 prefix_eval=(f"teacher={clash}",)))
    with pytest.raises(KdError, match="ROLE=DIR"):
        ReportOptions(teacher_eval="t", baseline_eval="b", student_eval="s", out="o", prefix_eval=("pupil=x",))
    with pytest.raises(KdError, match="no classification.json"):
        run_report(ReportOptions(*map(str, study["evals"]), out=str(tmp_path / "r4"), classify=str(tmp_path)))
