"""`kdstream classify` (analysis/classify_run.py) on synthetic features and eval directories."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from analysis_dirs import synthetic_dirs, write_eval
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from kdstream.analysis.classify_run import ClassifyRunOptions, classification_table, run_classify
from kdstream.cli.analysis import classify
from kdstream.errors import KdError


def test_classify_auc_determinism_and_filter(tmp_path):
    student, teacher, baseline, positives = synthetic_dirs(tmp_path)
    base = dict(student_eval=str(student), teacher_features=str(teacher), baseline_features=str(baseline), repeats=20)
    r1 = run_classify(ClassifyRunOptions(out=str(tmp_path / "c1"), **base))
    assert r1["auc"]["mean"] > 0.9
    assert r1["positives"] == 30 and r1["negatives"] == 170 and r1["examples"] == 200
    assert r1["coefficients"]["zlib_entropy"]["mean"] < 0 and r1["filter"] is None
    assert not (tmp_path / "c1" / "exclude.txt").exists()
    r2 = run_classify(ClassifyRunOptions(out=str(tmp_path / "c2"), **base))
    assert r1 == r2
    held = pq.read_table(tmp_path / "c1" / "heldout.parquet").to_pandas()
    assert held.equals(pq.read_table(tmp_path / "c2" / "heldout.parquet").to_pandas())
    assert sorted(held["repeat"].unique()) == list(range(20))
    aucs = [roc_auc_score(g["label"], g["score"]) for _, g in held.groupby("repeat")]
    assert np.mean(aucs) == pytest.approx(r1["auc"]["mean"], rel=1e-12)  # the ROC curves are those of the AUCs
    assert set(held["example_id"]) <= set(range(500, 700))
    assert json.loads((tmp_path / "c1" / "classification.json").read_text()) == r1
    assert run_classify(ClassifyRunOptions(out=str(tmp_path / "c3"), seed=1, **base)) != r1

    rf = run_classify(ClassifyRunOptions(out=str(tmp_path / "cf"), filter=True, target_recall=0.9, **base))
    excluded = {int(x) for x in (tmp_path / "cf" / "exclude.txt").read_text().split()}
    assert len(excluded & positives) >= 0.9 * len(positives)
    assert len(excluded) < 200
    f = rf["filter"]
    assert f["flagged"] == len(excluded) and f["target_recall"] == 0.9 and 0 <= f["expected_recall"] <= 1
    assert f["train_recall"] >= 0.9 and 0 < f["threshold"] < 1
    table = pq.read_table(tmp_path / "cf" / "table.parquet").to_pandas()
    assert set(table.loc[table["flagged"], "example_id"]) == excluded
    assert table["memorized"].sum() == 30
    from kdstream.distill.sources import read_exclude  # the reader `distill --exclude` uses

    assert read_exclude(str(tmp_path / "cf" / "exclude.txt")) == frozenset(excluded)


def test_classify_joins_by_example_id(tmp_path):
    student, teacher, baseline, positives = synthetic_dirs(tmp_path)
    table, labels = classification_table(student, teacher, baseline)
    ev = pq.read_table(student / "results.parquet").to_pandas()
    tf = pq.read_table(teacher / "features.parquet").to_pandas().set_index("example_id")
    bf = pq.read_table(baseline / "features.parquet").to_pandas().set_index("example_id")
    np.testing.assert_array_equal(table["example_id"], ev["example_id"])
    np.testing.assert_array_equal(labels, ev["exact_match"])
    np.testing.assert_array_equal(table["teacher_ppl"], tf.loc[ev["example_id"], "ppl"])
    np.testing.assert_array_equal(table["baseline_ppl"], bf.loc[ev["example_id"], "ppl"])
    np.testing.assert_array_equal(table["teacher_baseline_kl"], bf.loc[ev["example_id"], "teacher_kl"])
    np.testing.assert_array_equal(table["zlib_entropy"], tf.loc[ev["example_id"], "zlib_entropy"])


def test_classify_errors(tmp_path):
    student, teacher, baseline, _ = synthetic_dirs(tmp_path)
    base = dict(student_eval=str(student), teacher_features=str(teacher), baseline_features=str(baseline),
                out=str(tmp_path / "c"), repeats=2)
    with pytest.raises(KdError, match="not found"):
        run_classify(ClassifyRunOptions(**{**base, "teacher_features": str(tmp_path / "nope")}))
    with pytest.raises(KdError, match="not found"):
        run_classify(ClassifyRunOptions(**{**base, "student_eval": str(tmp_path / "nope")}))
    short = write_eval(tmp_path / "short", np.arange(10, 400), {10, 11, 12})  # ids beyond the features
    with pytest.raises(KdError, match="no teacher features"):
        run_classify(ClassifyRunOptions(**{**base, "student_eval": str(short)}))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(KdError, match="kdstream did not write"):
        run_classify(ClassifyRunOptions(**{**base, "out": str(tmp_path / "busy")}))
    assert (tmp_path / "busy" / "keep.txt").exists()
    for bad in ({"repeats": 0}, {"target_recall": 0.0}, {"test_size": 1.0}, {"negative_ratio": 0}):
        with pytest.raises(KdError):
            ClassifyRunOptions(**{**base, **bad})



def test_classify_through_click(tmp_path):
    """--config, --filter and --seed through click; a missing eval is a KdError."""
    runner = CliRunner()

    student, teacher, baseline, _ = synthetic_dirs(tmp_path / "syn")
    config = tmp_path / "classify.yaml"
    config.write_text(yaml.safe_dump({"repeats": 3, "target-recall": 0.9}))
    r = runner.invoke(classify, ["--config", str(config), "--student-eval", str(student), "--teacher-features",
                                 str(teacher), "--baseline-features", str(baseline), "--out", str(tmp_path / "cls"),
                                 "--filter", "--seed", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["repeats"] == 3 and out["seed"] == 1 and out["filter"]["target_recall"] == 0.9
    assert {p.name for p in (tmp_path / "cls").iterdir()} == {
        "classification.json", "options.yaml", "table.parquet", "heldout.parquet", "exclude.txt",
        ".kdstream-output.json"}  # the owner file: only classify may replace this directory

    r = runner.invoke(classify, ["--student-eval", str(tmp_path / "missing"), "--teacher-features", str(teacher),
                                 "--baseline-features", str(baseline), "--out", str(tmp_path / "y")])
    assert isinstance(r.exception, KdError)


def test_classify_command_is_deterministic_given_seed(tmp_path):
    student, teacher, baseline, _ = synthetic_dirs(tmp_path / "syn")
    args = ["--student-eval", str(student), "--teacher-features", str(teacher), "--baseline-features", str(baseline),
            "--repeats", "4", "--filter"]
    outs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        r = CliRunner().invoke(classify, [*args, "--seed", seed, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        outs.append(tmp_path / name)
    a, b, c = (json.loads((d / "classification.json").read_text()) for d in outs)
    for result in (a, b, c):
        assert result["filter"].pop("exclude_file").endswith("exclude.txt")  # names its own --out
    assert a == b and a != c
    for name in ("heldout.parquet", "table.parquet", "exclude.txt"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
