"""`--find-regime`'s search on counts of a known shape (the training behind a point is
tests/study/test_find_regime.py's): where it goes, when it falls back to T = 1, when it stops."""
from __future__ import annotations

import math

import pytest

from kdstream.study.calibrate import TARGET_BAND
from kdstream.study.find_regime import MIN_WINDOWS, Point, search
from kdstream.study.protocol import MIN_CLASS

N = 500


def _ramp(epochs: float, half: float, width: float) -> float:
    """Windows memorized after ``epochs`` passes: switches on around ``half`` (a logistic, as the
    README corpus's counts do: 0.6% at 16 epochs, 47% at 20)."""
    return round(N / (1 + math.exp(-(epochs - half) / width)))


def _world(teacher_half: float, baseline_half: float, student_lag: float, t1_gain: float = 0.0, width: float = 1.5):
    """run_point for counts of this shape: the student follows the baseline ``student_lag`` epochs
    behind, less so the more its teacher memorizes (and with T = 1)."""
    runs: list[Point] = []

    def run_point(p: Point) -> dict:
        runs.append(p)
        t = _ramp(p.teacher_epochs, teacher_half, width)
        b = _ramp(p.student_epochs, baseline_half, width)
        lift = 2 * t / N + (t1_gain if p.temperature == 1.0 else 0.0)
        s = min(_ramp(p.student_epochs - student_lag + lift, baseline_half, width), max(b - 1, 0))
        return {"point": p.name, "settings": p.values(), "examples": N, "student_min": s,
                "memorized": {"teacher": t, "baseline": b, "student": s}}

    return run_point, runs


def _record() -> dict:
    return {"target_band": list(TARGET_BAND), "min_student_windows": MIN_CLASS, "examples": N,
            "points": [], "found": None, "stopped": None}


def _in_regime(row: dict) -> bool:
    t, b, s = (row["memorized"][r] for r in ("teacher", "baseline", "student"))
    return (t > b > s >= MIN_CLASS and all(TARGET_BAND[0] * N <= c <= TARGET_BAND[1] * N for c in (t, b, s)))


def test_the_search_finds_the_regime_and_says_why_at_each_point(capsys):
    run_point, runs = _world(teacher_half=14, baseline_half=15, student_lag=1)
    record = search(_record(), Point(4, 4, 2.0), run_point, max_points=12)
    assert record["found"] == runs[-1].name and record["stopped"] is None
    assert _in_regime(record["points"][-1]) and not any(_in_regime(r) for r in record["points"][:-1])
    assert len(runs) == len(set(runs)) <= 8  # no point twice
    assert all(p.temperature == 2.0 for p in runs)  # reachable at the paper's T: it stays
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[find-regime] point")]
    assert len(lines) == len(runs) and "teacher epochs 4 -> 8, student's with it" in lines[0]
    assert "in the regime" in lines[-1]


def test_t1_only_when_no_point_fits_at_t2():
    # a student that lags its baseline by 3 epochs never has 5 windows under a baseline below a
    # teacher within the band; at T = 1 it lags by 1
    run_point, runs = _world(teacher_half=16, baseline_half=16.5, student_lag=3, t1_gain=2.5)
    record = search(_record(), Point(16, 16, 2.0), run_point, max_points=20)
    switch = next(i for i, p in enumerate(runs) if p.temperature == 1.0)
    assert "at T = 2 the band is out of reach" in record["points"][switch - 1]["next"]
    # a teacher trained at T = 2 already (shared), under a baseline known to fit below it
    assert runs[switch].teacher_epochs in {p.teacher_epochs for p in runs[:switch]}
    assert all(p.temperature == 1.0 for p in runs[switch:])
    assert record["found"] is not None and _in_regime(record["points"][-1])


def test_max_points_stops_with_the_reason_and_the_best_point():
    run_point, runs = _world(teacher_half=14, baseline_half=15, student_lag=1)
    record = search(_record(), Point(4, 4, 2.0), run_point, max_points=2)
    assert len(runs) == 2 and record["found"] is None
    assert record["stopped"].startswith("stopped after 2 points (--max-points), the next being ")
    assert "best point teacher_epochs-" in record["stopped"] and "\n" not in record["stopped"]


def test_an_unreachable_regime_stops_with_the_reason():
    run_point, runs = _world(teacher_half=16, baseline_half=16.5, student_lag=6)
    record = search(_record(), Point(16, 16, 2.0), run_point, max_points=30)
    assert record["found"] is None and "the band is out of reach here" in record["stopped"]
    assert "best point" in record["stopped"] and len(runs) == len(set(runs))


def test_the_floor_in_windows():
    # a student of MIN_CLASS windows below a baseline below a teacher, the teacher at most 10%
    assert MIN_WINDOWS == math.ceil((MIN_CLASS + 2) / TARGET_BAND[1]) == 70


@pytest.mark.parametrize("start", [Point(1, 1, 2.0), Point(64, 64, 2.0), Point(30, 10, 2.0)])
def test_the_search_converges_from_far_starts(start):
    run_point, _ = _world(teacher_half=14, baseline_half=15, student_lag=1)
    record = search(_record(), start, run_point, max_points=16)
    assert record["found"] is not None, record["stopped"]


def test_search_md_lists_every_point_with_its_reason_and_the_stop():
    from kdstream.study.find_regime import search_markdown

    run_point, _ = _world(teacher_half=14, baseline_half=15, student_lag=1)
    record = search(_record(), Point(4, 4, 2.0), run_point, max_points=2)
    md = search_markdown(record)
    assert "| 1 | teacher_epochs-4__student_epochs-4__temperature-2.0 | 0.20% (1) |" in md
    assert all(row["next"] in md for row in record["points"])
    assert md.rstrip().endswith(record["stopped"][1:] + ".") and "\nStopped after 2 points" in md
