"""`kdstream reproduce --calibrate`: sweep the knobs that set the memorization regime over a small
grid and tabulate the rates, so a user with another corpus or machine can find the paper's regime
(rare memorization, teacher > baseline > student) before running the whole study.

Every grid point is the base StudyConfig (embedded defaults, then --config, then flags) with the
grid's values for its knobs, run by the study's own protocol (``run_seed(calibration=True)``) up
to the memorization counts: teacher CE, precompute, baseline CE, student KD, extract-eval of the
three, compare. No classifier, filter or canary evals: a cheap sweep. Layout::

    OUT/calibrate.yaml                     the grid and the base config of the last sweep
    OUT/points/NAME/                       a reproduce directory (config.yaml, tokenizer/, init/)
    OUT/points/NAME/seed-S/                its stages, as `kdstream reproduce` lays them out
    OUT/calibration.json calibration.md    every point's settings, counts, rates and stage seconds

A point's directory is a study directory: ``kdstream reproduce --config OUT/points/NAME/config.yaml
--out OUT/points/NAME`` finishes the whole study there, reusing the trained models.

The grid file is YAML, one StudyConfig field per key with a list of values; the points are the
cartesian product, in the file's key order::

    dataset: [demo+licenses:0.3, demo+licenses:0.4]
    teacher_epochs: [3, 4]
    teacher_model: [tiny-teacher, small-teacher]
"""
from __future__ import annotations

import itertools
import json
import re
import sys
from dataclasses import fields, replace
from pathlib import Path

import yaml

from kdstream.errors import KdError
from kdstream.options import check_value, read_user_yaml
from kdstream.study.config import TINY_ARCHS, StudyConfig

CALIBRATE_YAML = "calibrate.yaml"
CALIBRATION_JSON = "calibration.json"
CALIBRATION_MD = "calibration.md"
ROLES = ("teacher", "baseline", "student")
# The paper's rates (0.33% / 0.17% / 0.07% of 1M examples) and the band a calibrated study aims for.
PAPER_RATES = {"teacher": 0.0033, "baseline": 0.0017, "student": 0.0007}
TARGET_BAND = (0.001, 0.10)
# The embedded grid: around the embedded defaults, the share of license text, the knob that placed
# the regime last: more license text makes the teacher's extra recall forks between near-duplicate
# licenses, which the student inherits (the sweep's figures: docs/study.md).
DEFAULT_GRID: dict[str, list] = {
    "dataset": ["demo+licenses:0.3", "demo+licenses:0.35", "demo+licenses:0.4"],
}
# Not knobs of a point: seeds are the sweep's own (every point runs for every seed); tuples (extra
# stage flags, canary counts) would make a list of lists.
_NOT_SWEPT = {"seeds", "first_seed"}
_FIELDS = {f.name: f for f in fields(StudyConfig)}
_SWEPT = sorted(name for name, f in _FIELDS.items() if name not in _NOT_SWEPT and not str(f.type).startswith("tuple"))


def load_grid(path: str | None) -> dict[str, list]:
    """The grid from a YAML file (None: the embedded DEFAULT_GRID), checked key by key."""
    if path is None:
        return {k: list(v) for k, v in DEFAULT_GRID.items()}
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KdError(f"grid {path} could not be read ({exc.__class__.__name__}): pass a YAML file "
                      "like {examples: [2000, 4000], teacher_epochs: [3]}") from None
    grid = read_user_yaml(text, f"grid {path}")
    if not isinstance(grid, dict) or not grid:
        raise KdError(f"grid {path} is not a YAML mapping of knobs to lists: write e.g. "
                      "{examples: [2000, 4000], teacher_epochs: [3]}")
    return {str(k).replace("-", "_"): v if isinstance(v, list) else [v] for k, v in grid.items()}


def _check_value(key: str, value, where: str) -> None:
    check_value(key, value, str(_FIELDS[key].type), where)
    if key in ("teacher_model", "student_model") and value not in TINY_ARCHS and not Path(value).is_dir():
        raise KdError(f"{where}: {key} {value!r} is neither one of {', '.join(TINY_ARCHS)} nor a model "
                      "directory: fix the grid's model names")


def check_grid(grid: dict[str, list], where: str = "grid") -> None:
    """One-line KdError for an impossible grid: unknown key, empty list, value of the wrong type."""
    for key, values in grid.items():
        if key not in _FIELDS:
            raise KdError(f"{where}: unknown key {key!r}: the keys are StudyConfig fields, e.g. "
                          "examples, teacher_epochs, student_epochs, teacher_model, student_model")
        if key not in _SWEPT:
            raise KdError(f"{where}: {key} cannot be swept (set it in --config or with its flag); "
                          f"the knobs are {', '.join(_SWEPT)}")
        if not values:
            raise KdError(f"{where}: {key} has no values: give it a list of at least one value")
        if len({json.dumps(v) for v in values}) != len(values):
            raise KdError(f"{where}: {key} repeats a value: list each value once")
        for v in values:
            _check_value(key, v, where)


def point_name(values: dict) -> str:
    """A point's directory name from its grid values, e.g. ``examples-2000__teacher_epochs-3``:
    letters, digits, ``._-`` only (a comma would split a --logits-store list)."""
    return "__".join(f"{k}-{re.sub(r'[^A-Za-z0-9._-]', '_', str(v))}" for k, v in values.items())


def grid_points(base: StudyConfig, grid: dict[str, list], where: str = "grid") -> list[tuple[str, dict, StudyConfig]]:
    """(name, grid values, config) of every point: the cartesian product in the grid's key order."""
    check_grid(grid, where)
    out = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        try:
            cfg = replace(base, **values)  # __post_init__ checks the combination (KdError)
        except KdError as exc:
            raise KdError(f"{where}: the point {point_name(values)} is impossible ({exc}): change the grid") from None
        out.append((point_name(values), values, cfg))
    names = [name for name, _, _ in out]
    if len(set(names)) != len(names):  # e.g. models a/b and a_b: one directory for two points
        twice = next(n for n in names if names.count(n) > 1)
        raise KdError(f"{where}: two points share the directory name {twice}: rename one of the values")
    return out


def run_calibration(base: StudyConfig, grid: dict[str, list], out: str, where: str = "grid") -> dict:
    """Run (or resume) every point of ``grid`` for every seed of ``base``; write and print the table."""
    from kdstream.study.protocol import run_seed
    from kdstream.study.reproduce import claim_out_dir, prepare_study_dir, resolved_config

    points = grid_points(base, grid, where)
    root = Path(out)
    claim_out_dir(root, CALIBRATE_YAML, "kdstream reproduce --calibrate")
    base_resolved = resolved_config(base)
    (root / CALIBRATE_YAML).write_text(yaml.safe_dump({"grid": grid, "base": base_resolved}, sort_keys=False))

    rows = []
    for i, (name, values, cfg) in enumerate(points, 1):
        print(f"[calibrate] point {i}/{len(points)}: {name}", file=sys.stderr, flush=True)
        pdir = root / "points" / name
        _, models, texts = prepare_study_dir(cfg, pdir)
        for seed in cfg.seed_list:
            fig = run_seed(cfg, pdir / f"seed-{seed}", seed, models, texts, calibration=True)
            row = {"point": name, "seed": seed, "settings": values, "dir": str(pdir / f"seed-{seed}"),
                   "requested_examples": cfg.examples, **fig}
            row["in_band"] = all(TARGET_BAND[0] <= row["rate"][r] <= TARGET_BAND[1] for r in ROLES)
            row["ordered"] = row["rate"]["teacher"] > row["rate"]["baseline"] > row["rate"]["student"]
            rows.append(row)
            print(f"[calibrate] point {i}/{len(points)} seed {seed}: " + _rates(row), file=sys.stderr, flush=True)
            result = _write(root, {"grid": grid, "base": base_resolved, "paper_rates": PAPER_RATES,
                                   "target_band": list(TARGET_BAND), "points": rows, "complete": False})
    result = _write(root, {**result, "complete": True})
    print((root / CALIBRATION_MD).read_text())
    print(f"outputs in {root}/ (calibration.md, calibration.json; points/NAME/ for each point's stages)")
    return result


def _write(root: Path, result: dict) -> dict:
    """calibration.json and .md, rewritten after every point: a long sweep shows what it has so far
    (``complete`` false until the last point)."""
    tmp = root / (CALIBRATION_JSON + ".partial")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(root / CALIBRATION_JSON)
    (root / CALIBRATION_MD).write_text(calibration_markdown(result))
    return result


def _rates(row: dict) -> str:
    return " / ".join(f"{r} {100 * row['rate'][r]:.2f}% ({row['memorized'][r]})" for r in ROLES)


def _pct(rate: float) -> str:
    return f"{100 * rate:.2f}%"


def calibration_markdown(result: dict) -> str:
    """The sweep's table beside the paper's row: rates in %, the target band and the ordering marked."""
    lo, hi = result["target_band"]
    lines = [
        "# Calibration: memorization rates over the grid",
        "",
        f"Target: every rate between {_pct(lo)} and {_pct(hi)}, teacher > baseline > student. "
        "Rates are exact extractions of the suffix from the prefix over the training examples.",
        "",
        "| point | seed | examples | teacher | baseline | student | in band | teacher > baseline > student | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
        "| paper (Pythia-12B → 1.4B, FineWeb) | | 1,000,000 | 0.33% | 0.17% | 0.07% | yes | yes | |",
    ]
    for row in result["points"]:
        cells = [f"{_pct(row['rate'][r])} ({row['memorized'][r]})" for r in ROLES]
        minutes = sum(row["stage_seconds"].values()) / 60
        # fewer windows than asked: the corpus ran out (the rates are over the examples there were)
        examples = str(row["examples"]) + (f" (of {row['requested_examples']} asked: corpus too short)"
                                           if row["examples"] < row["requested_examples"] else "")
        lines.append(f"| {row['point']} | {row['seed']} | {examples} | {' | '.join(cells)} | "
                     f"{'yes' if row['in_band'] else 'no'} | {'yes' if row['ordered'] else 'no'} | {minutes:.1f} |")
    if not result.get("complete", True):
        lines += ["", "The sweep is still running (or stopped): the points above are those finished."]
    lines += ["", "Grid: `" + json.dumps(result["grid"]) + "`; every other setting from the base config "
              "(calibration.json `base`). Minutes: the stages' recorded seconds (a resumed stage keeps "
              "its first run's)."]
    return "\n".join(lines) + "\n"
