"""`kdstream reproduce --calibrate`: a reduced sweep end to end through the CLI, and `reproduce`
at one of its points giving the counts the sweep reported (issue 19's must-hold); bad grids."""
from __future__ import annotations

import json

import pytest

from helpers import run_cli

# The reduced study's shape (tests/study/test_reproduce.py) at its cheapest: every stage is a
# kdstream process whose start-up dominates, so the counts come from few examples; 20 epochs make
# them non-zero (measured: teacher 2, baseline 2, student 1 of 24), so equality means something.
BASE = """\
examples: 16
seq_len: 64
tokenizer_vocab: 1024
teacher_model: micro-teacher
student_model: micro-student
teacher_epochs: 20
student_epochs: 20
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
teacher_lr: 0.003
lr: 0.003
precompute_args: [--dtype, float32, --backend, hf]
"""
GRID = "examples: [16, 24]\nteacher_epochs: [20]\n"
ROLES = ("teacher", "baseline", "student")


@pytest.mark.slow
def test_calibration_sweep_and_reproduce_at_a_point_agree(tmp_path):
    from kdstream.analysis.compare import memorized_ids

    base, grid = tmp_path / "base.yaml", tmp_path / "grid.yaml"
    base.write_text(BASE)
    grid.write_text(GRID)
    out = tmp_path / "calib"
    proc = run_cli("reproduce", "--calibrate", "--config", base, "--grid", grid, "--out", out, timeout=900)
    assert "[calibrate] point 1/2: examples-16__teacher_epochs-20" in proc.stderr
    assert "[calibrate] point 2/2: examples-24__teacher_epochs-20" in proc.stderr
    # a cheap sweep: no classifier, filter or canary evals
    assert "kdstream classify" not in proc.stderr and "canaries teacher" not in proc.stderr
    assert "| paper (Pythia-12B → 1.4B, FineWeb) | | 1,000,000 | 0.33% | 0.17% | 0.07% |" in proc.stdout
    result = json.loads((out / "calibration.json").read_text())
    assert result["complete"] and result["grid"] == {"examples": [16, 24], "teacher_epochs": [20]}
    assert [p["point"] for p in result["points"]] == ["examples-16__teacher_epochs-20", "examples-24__teacher_epochs-20"]
    for point in result["points"]:
        seed_dir = out / "points" / point["point"] / "seed-0"
        assert point["examples"] == point["settings"]["examples"]
        assert set(point["stage_seconds"]) >= {"teacher (CE)", "precompute", "student (KD)", "compare"}
        for role in ROLES:  # the table's numbers are the eval directories' numbers
            ids, n = memorized_ids(seed_dir / "eval" / role)
            assert point["memorized"][role] == len(ids) and point["rate"][role] == pytest.approx(len(ids) / n)
        assert point["ordered"] == (point["rate"]["teacher"] > point["rate"]["baseline"] > point["rate"]["student"])
        assert not (seed_dir / "eval-canaries").exists() and not (seed_dir / "classify").exists()
    assert (out / "calibration.md").read_text() in proc.stdout
    # each point's resolved config is saved (a reproduce --config for it)
    import yaml

    saved = yaml.safe_load((out / "points" / "examples-24__teacher_epochs-20" / "config.yaml").read_text())
    assert saved["examples"] == 24 and saved["teacher_model"] == "micro-teacher"

    # a rerun resumes: every stage skipped, the same table
    again = run_cli("reproduce", "--calibrate", "--config", base, "--grid", grid, "--out", out)
    assert "kdstream distill" not in again.stderr and "already done, skipping" in again.stderr
    assert json.loads((out / "calibration.json").read_text())["points"] == result["points"]

    # the must-hold: `reproduce` at a grid point (same seed, a fresh directory) memorizes the same
    # examples the sweep reported for it
    point = result["points"][1]
    study = tmp_path / "study"
    run_cli("reproduce", "--config", base, "--examples", 24, "--teacher-epochs", 20, "--out", study, timeout=900)
    figures = json.loads((study / "seed-0" / "figures.json").read_text())
    assert figures["memorized"] == point["memorized"] and figures["examples"] == point["examples"]
    for role in ROLES:
        swept = out / "points" / point["point"] / "seed-0" / "eval" / role
        assert memorized_ids(study / "seed-0" / "eval" / role) == memorized_ids(swept)


@pytest.mark.parametrize("grid, message", [
    ("{examplez: [16]}", "unknown key 'examplez'"),
    ("{examples: []}", "examples has no values"),
    ("{examples: [sixteen]}", 'examples is "sixteen", not an integer'),
    ("{teacher_model: [huge-teacher]}", "teacher_model 'huge-teacher' is neither one of"),
    ("{examples: [2]}", "the point examples-2 is impossible (examples 2 must be at least 4)"),
    ("{seeds: [1, 2]}", "seeds cannot be swept"),
    ("{examples: [16, 16]}", "examples repeats a value"),
    ("[16, 24]", "is not a YAML mapping"),
])
def test_an_impossible_grid_is_one_line_naming_the_fix(tmp_path, grid, message):
    path = tmp_path / "grid.yaml"
    path.write_text(grid)
    proc = run_cli("reproduce", "--calibrate", "--grid", path, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_grid_without_calibrate_or_a_flag_the_grid_sweeps_is_refused(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("{examples: [16]}")
    proc = run_cli("reproduce", "--grid", path, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "--grid is only used with --calibrate" in proc.stderr
    path.write_text("{teacher_epochs: [3, 4]}")
    proc = run_cli("reproduce", "--calibrate", "--grid", path, "--teacher-epochs", 5, "--out", tmp_path / "out",
                   check=False)
    assert proc.returncode == 2 and f"--teacher-epochs is swept by the grid {path}: drop the flag" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_default_grid_is_valid_and_names_its_points():
    from kdstream.study.calibrate import DEFAULT_GRID, grid_points, load_grid
    from kdstream.study.config import StudyConfig

    points = grid_points(StudyConfig(), load_grid(None))
    assert len(points) == 3 and load_grid(None) == DEFAULT_GRID
    name, values, cfg = points[0]
    assert name == "dataset-demo_licenses_0.3"  # the embedded defaults' own point
    assert cfg == StudyConfig() and values == {"dataset": "demo+licenses:0.3"}


def test_two_values_that_would_share_a_directory_are_refused(tmp_path):
    from kdstream.errors import KdError
    from kdstream.study.calibrate import grid_points
    from kdstream.study.config import StudyConfig

    (tmp_path / "a b").mkdir()
    (tmp_path / "a_b").mkdir()
    with pytest.raises(KdError, match="share the directory name"):
        grid_points(StudyConfig(), {"teacher_model": [str(tmp_path / "a b"), str(tmp_path / "a_b")]})


def test_the_table_marks_the_band_the_ordering_and_a_short_corpus():
    from kdstream.study.calibrate import PAPER_RATES, TARGET_BAND, calibration_markdown

    def row(name, counts, examples=1000, requested=1000):
        return {"point": name, "seed": 0, "examples": examples, "requested_examples": requested,
                "memorized": dict(zip(ROLES, counts)), "rate": {r: c / examples for r, c in zip(ROLES, counts)},
                "stage_seconds": {"teacher (CE)": 90.0, "compare": 30.0},
                "in_band": all(TARGET_BAND[0] <= c / examples <= TARGET_BAND[1] for c in counts),
                "ordered": counts[0] > counts[1] > counts[2]}

    result = {"grid": {"examples": [1000]}, "paper_rates": PAPER_RATES, "target_band": list(TARGET_BAND),
              "points": [row("good", (30, 12, 5)), row("saturated", (990, 700, 400)),
                         row("short", (3, 3, 0), examples=800, requested=4000)], "complete": True}
    md = calibration_markdown(result)
    assert "| good | 0 | 1000 | 3.00% (30) | 1.20% (12) | 0.50% (5) | yes | yes | 2.0 |" in md
    assert "| saturated | 0 | 1000 | 99.00% (990) | 70.00% (700) | 40.00% (400) | no | yes |" in md
    assert "| short | 0 | 800 (of 4000 asked: corpus too short) | 0.38% (3) | 0.38% (3) | 0.00% (0) | no | no |" in md
    assert "between 0.10% and 10.00%" in md and "still running" not in md
    assert "still running" in calibration_markdown({**result, "complete": False})
