"""`kdstream reproduce` (the whole study) and `kdstream demo` (the same, on the embedded default).

The study's own YAML (``--config study.yaml``) holds StudyConfig fields (kdstream/study/config.py),
not command flags; the flags below override a few of them.
"""
from __future__ import annotations

import click


def _study_flags(f):
    f = click.option("--seeds", type=int, default=None, help="Run the study for N seeds; figures become mean ± sd.")(f)
    f = click.option("--first-seed", type=int, default=None, help="Seeds run from this one (default 0).")(f)
    f = click.option("--examples", type=int, default=None, help="Training examples (windows of seq_len tokens).")(f)
    f = click.option("--teacher-epochs", type=int, default=None)(f)
    f = click.option("--student-epochs", type=int, default=None, help="Epochs of baseline, student and filtered student.")(f)
    f = click.option("--eval-method", default=None, help="generate (vLLM greedy, the reference) | fast | both")(f)
    f = click.option("--eval-backend", default=None, help="vllm | hf")(f)
    return f


@click.command("reproduce")
@click.option("--out", required=True, help="Directory for the whole study (resumes when it exists).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Study YAML (StudyConfig fields; configs/study.yaml is the paper's GPU setting). "
                   "Default: the embedded 2-core miniature.")
@_study_flags
def reproduce(out, config_path, **overrides):
    """The paper's protocol end to end: teacher CE → baseline CE → teacher store → student KD →
    extract-eval (+ features, canaries) → compare → classify → filter → re-distill → extract-eval →
    report beside the paper's table (study.md). Finished stages are skipped on a rerun."""
    from kdstream.study.config import load_study_config
    from kdstream.study.reproduce import run_reproduce

    run_reproduce(load_study_config(config_path, overrides), out)


@click.command("demo")
@click.option("--out", default="runs/demo", show_default=True, help="Folder for every output of the study.")
@_study_flags
def demo(out, **overrides):
    """`kdstream reproduce` on the embedded default (what `make demo` runs): the study in miniature
    on standard-library docstrings with tiny GPT-NeoX models and planted canaries."""
    from kdstream.study.config import load_study_config
    from kdstream.study.reproduce import run_reproduce

    run_reproduce(load_study_config(None, overrides), out)


STUDY_COMMANDS = [reproduce, demo]
