"""`kdstream reproduce` (the whole study) and `kdstream demo` (the same, on the embedded default).

The study's own YAML (``--config study.yaml``) holds StudyConfig fields (kdstream/study/config.py),
not command flags; the flags below override a few of them.
"""
from __future__ import annotations

import sys

import click

from kdstream.cli.options import options_from
from kdstream.errors import KdError
from kdstream.study.config import StudyConfig, load_study_config

# StudyConfig fields that are also flags: the rest are set in the study YAML. Their flags default
# to None so that a value in --config's YAML is only overridden when the flag is given.
STUDY_FLAGS = ("examples", "teacher_epochs", "student_epochs", "eval_method", "eval_backend", "seeds", "first_seed")
_study_flags = options_from(StudyConfig, only=STUDY_FLAGS, as_override=True)


@click.command("reproduce")
@click.option("--out", required=True, help="Directory for the whole study (resumes when it exists).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Study YAML (StudyConfig fields; configs/study.yaml is the paper's GPU setting). "
                   "Default: the embedded 2-core miniature.")
@click.option("--calibrate", is_flag=True, default=False,
              help="Sweep a grid of examples / epochs / model sizes up to the memorization counts (no classifier, "
                   "filter or canary evals) and tabulate the rates beside the paper's (OUT/calibration.md).")
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False), default=None,
              help="With --calibrate: YAML grid {field: [values]} (the cartesian product; it overrides --config; "
                   "a flag for a swept knob is refused). Default: the embedded grid "
                   "(kdstream.study.calibrate.DEFAULT_GRID).")
@click.option("--find-regime", is_flag=True, default=False,
              help="Search the teacher's and the student's epochs (then T = 1 if T = 2 cannot) for the first point "
                   "in the paper's regime, each point up to the memorization counts, then run the whole study there "
                   "(points in OUT/search/, the chosen settings in OUT/config.yaml).")
@click.option("--max-points", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --find-regime: stop after this many points (then it names the best).")
@_study_flags
def reproduce(out, config_path, calibrate, grid_path, find_regime, max_points, **overrides):
    """The paper's protocol end to end: teacher CE → baseline CE → teacher store → student KD →
    extract-eval (+ features, canaries) → compare → classify → filter → re-distill → extract-eval →
    report beside the paper's table (study.md). Finished stages are skipped on a rerun.
    With --calibrate: the memorization rates at every point of a grid (calibration.md)."""
    if find_regime:
        if calibrate:
            raise KdError("--find-regime and --calibrate are two searches: pass one of them")
        from kdstream.study.find_regime import KNOBS

        fixed = sorted(k for k in KNOBS if overrides.get(k) is not None)
        if fixed:  # the search would silently move what the flag fixes
            flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
            raise KdError(f"{flags} is searched by --find-regime: drop the flag (set the starting value in "
                          "--config), or drop --find-regime")
    cfg = load_study_config(config_path, overrides)
    if find_regime:
        if grid_path is not None:
            raise KdError("--grid is only used with --calibrate: drop --grid (--find-regime picks its own points)")
        from kdstream.study.find_regime import run_find_regime

        if run_find_regime(cfg, out, max_points)["found"] is None:
            sys.exit(1)  # the reason and the best point are printed
        return
    if calibrate:
        from kdstream.study.calibrate import load_grid, run_calibration

        grid = load_grid(grid_path)
        swept = sorted(k for k, v in overrides.items() if v is not None and k in grid)
        if swept:  # the grid would silently win over the flag
            flags = ", ".join("--" + k.replace("_", "-") for k in swept)
            raise KdError(f"{flags} is swept by the {'grid ' + grid_path if grid_path else 'embedded grid'}: "
                          "drop the flag, or set the values in a --grid file")
        run_calibration(cfg, grid, out, where=f"grid {grid_path}" if grid_path else "grid")
        return
    if grid_path is not None:
        raise KdError("--grid is only used with --calibrate: add --calibrate, or drop --grid")
    from kdstream.study.reproduce import run_reproduce

    run_reproduce(cfg, out)


@click.command("demo")
@click.option("--out", default="runs/demo", show_default=True, help="Folder for every output of the study.")
@_study_flags
def demo(out, **overrides):
    """`kdstream reproduce` on the embedded default (what `make demo` runs): the study in miniature
    on standard-library docstrings with the installed dependencies' license texts (30% of the
    characters), tiny GPT-NeoX models and planted canaries."""
    from kdstream.study.reproduce import run_reproduce

    run_reproduce(load_study_config(None, overrides), out)


STUDY_COMMANDS = [reproduce, demo]
