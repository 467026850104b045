"""`kdstream reproduce` (the whole study) and `kdstream demo` (the same, on the embedded default).

The study's own YAML (``--config study.yaml``) holds StudyConfig fields (kdstream/study/config.py),
not command flags; the flags below override a few of them.
"""
from __future__ import annotations

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
@_study_flags
def reproduce(out, config_path, calibrate, grid_path, **overrides):
    """The paper's protocol end to end: teacher CE → baseline CE → teacher store → student KD →
    extract-eval (+ features, canaries) → compare → classify → filter → re-distill → extract-eval →
    report beside the paper's table (study.md). Finished stages are skipped on a rerun.
    With --calibrate: the memorization rates at every point of a grid (calibration.md)."""
    cfg = load_study_config(config_path, overrides)
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
