"""Issue 19's study over seeds, saved as a benchmark result: `kdstream reproduce --seeds N` (the
embedded defaults, or --config FILE), then the aggregate figures (mean ± sd over the seeds), every
finding's verdict, each seed's figures and the seconds its stages took, with the command, commit
and machine (benchmarks/results/NAME.json).

The study runs as the CLI runs it (one subprocess); --work keeps its directory, and a rerun over a
finished --work only re-reads it (every stage is skipped as done, the report is written again).
``wall_s`` is this run's own time (~1 min on a re-read); ``stage_seconds`` are the study's own
records of each stage's first run, so they hold for a re-read too.

    python -m benchmarks.study_bench [--seeds 3] [--config FILE] [--work DIR] [--name NAME]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.miniature import run_reproduce
from benchmarks.results import save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--config", help="Study YAML (default: the embedded miniature)")
    parser.add_argument("--work", help="The study's --out (kept; a finished one is only re-read)")
    parser.add_argument("--name", default="study_bench", help="results/NAME.json")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.work or Path(tmp) / "study")
        cmd = run_reproduce("--out", str(out), "--seeds", str(args.seeds),
                            *(["--config", args.config] if args.config else []))
        study = json.loads((out / "study.json").read_text())
        seeds = {}
        for seed_dir in sorted(out.glob("seed-*")):
            stages = json.loads((seed_dir / "stage_seconds.json").read_text())
            seeds[seed_dir.name] = {"figures": json.loads((seed_dir / "figures.json").read_text()),
                                    "stage_seconds": stages, "stage_seconds_total": round(sum(stages.values()), 1)}
        figures = {"study": study, "seeds": seeds,
                   "stage_seconds_total": round(sum(s["stage_seconds_total"] for s in seeds.values()), 1),
                   "study_md": (out / "study.md").read_text(), "study_command": " ".join(cmd[1:]),
                   "wall_s": round(time.perf_counter() - start, 1)}
        save(args.name, figures)


if __name__ == "__main__":
    main()
