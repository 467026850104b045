"""A reduced study end to end through the CLI: `kdstream reproduce` with micro models."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import run_cli

# Small enough for the test suite, trained long enough that every model memorizes something, so
# the classifier, the filter and the re-distilled student all run.
REDUCED = """\
examples: 32
seq_len: 64
tokenizer_vocab: 1024
teacher_model: micro-teacher
student_model: micro-student
teacher_epochs: {epochs}
student_epochs: {epochs}
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
"""
EPOCHS = 30  # measured: 20 -> the student memorizes 0 of 32; 30 -> 17 of 32; 40 -> 31 of 32


def _aggregate(out: Path) -> dict:
    return json.loads((out / "study.json").read_text())["aggregate"]


@pytest.mark.slow
def test_reduced_study_end_to_end(tmp_path):
    config = tmp_path / "reduced.yaml"
    config.write_text(REDUCED.format(epochs=EPOCHS))
    out = tmp_path / "study"
    proc = run_cli("reproduce", "--config", config, "--out", out, timeout=1800)
    assert "| finding | paper | this run | 95% interval (counts) | criterion | verdict |" in proc.stdout
    seed = out / "seed-0"
    for path in ("teacher.zarr", "eval/teacher/results.parquet", "eval-canaries/student/results.parquet",
                 "eval/baseline/features/features.parquet", "compare/comparison.json", "report/report.md",
                 "figures.json", "stage_seconds.json"):
        assert (seed / path).exists(), path
    study = json.loads((out / "study.json").read_text())
    agg, figs = study["aggregate"], study["seeds"][0]
    # the report's numbers are the run's numbers: recount from the eval directories
    from kdstream.analysis.compare import memorized_ids

    for role in ("teacher", "baseline", "student"):
        ids, n = memorized_ids(seed / "eval" / role)
        assert figs["memorized"][role] == len(ids) == agg["memorized"][role]["mean"] and n == 32
    assert len(study["findings"]) == 8
    assert all(r["verdict"].split(" (")[0] in ("reproduced", "direction only", "not reproduced", "not testable")
               for r in study["findings"])
    # every testable finding has its interval and counts, from the seed's windows and the classifier's splits
    assert all(r["interval"] and r["counts"] for r in study["findings"] if not r["verdict"].startswith("not testable"))
    assert set(figs["canaries"]) >= {"teacher", "baseline", "student"}
    # judged by the fast path, the baseline generated no branch: compare says why it did not look for
    # forks, and the report leaves them out (greedy verdicts: tests/extract/test_extraction.py)
    forks = json.loads((seed / "compare" / "comparison.json").read_text())["forks"]
    assert "not greedy decoding" in forks["skipped"] and figs["teacher_only_at_fork"] is None
    assert "at a fork" not in (out / "study.md").read_text()
    assert (out / "canaries.png").stat().st_size > 1000 and (out / "study.md").exists()
    # the classifier, the filter and the re-distilled student ran (every model memorized something)
    assert figs["classifier"] is not None and figs["filter"] is not None, figs
    excluded = {int(x) for x in (seed / "classify" / "exclude.txt").read_text().split()}
    assert figs["filter"]["excluded"] == len(excluded) > 0
    summary = json.loads((seed / "student_filtered" / "train_summary.json").read_text())
    assert summary["examples"] == 32 - len(excluded)

    # a rerun skips every finished stage and reports the same numbers
    rerun = run_cli("reproduce", "--config", config, "--out", out)
    assert "already done, skipping" in rerun.stderr and "kdstream distill" not in rerun.stderr
    assert _aggregate(out) == agg
    # evaluating, comparing and classifying again (same seed) gives the same numbers (training
    # is deterministic per seed: tests/distill cover resume and rank counts)
    for path in ("eval/student", "eval-canaries/student", "compare", "classify"):
        shutil.rmtree(seed / path)
    again = run_cli("reproduce", "--config", config, "--out", out, timeout=1800)
    assert "kdstream classify" in again.stderr and "kdstream distill" not in again.stderr
    assert _aggregate(out) == agg
    # another setting in the same directory is refused in one line
    config.write_text(REDUCED.format(epochs=EPOCHS + 1))
    bad = run_cli("reproduce", "--config", config, "--out", out, check=False)
    assert bad.returncode == 2 and "other settings (student_epochs, teacher_epochs)" in bad.stderr
    assert "Traceback" not in bad.stderr
    # --seeds N runs seed_list in turn, each a seed directory like this one (skipped when done, as
    # above); their mean ± sd: tests/study/test_study_parts.py (a second seed here cost ~3 minutes)
