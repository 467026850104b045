"""The calibration sweep, saved as a research result: `kdstream reproduce --calibrate` over
a grid (the embedded one, or --grid FILE), then every point's memorization counts and rates, stage
seconds and verdicts (in the 0.1%–10% band; teacher > baseline > student) with the command, commit
and machine (benchmarks/research/results/NAME.json).

The sweep runs as the CLI runs it (one subprocess); --work keeps its directory, and a rerun over a
finished --work only re-reads it (every stage is skipped as done).

    OMP_NUM_THREADS=2 python -m benchmarks.research.calibration_bench [--grid FILE] [--config FILE] [--work DIR] [--name NAME]

--config is the sweep's base config (as for `kdstream reproduce --config`): e.g. to re-read a sweep
run under earlier embedded defaults, pass those defaults.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.miniature import run_reproduce
from benchmarks.results import RESEARCH_RESULTS, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", help="YAML grid (default: the embedded one, kdstream/study/calibrate.py)")
    parser.add_argument("--config", help="Study YAML: the base config of every point (default: the embedded one)")
    parser.add_argument("--seeds", type=int, help="Seeds per point (default: the config's, else 1)")
    parser.add_argument("--work", help="The sweep's --out (kept; a finished one is only re-read)")
    parser.add_argument("--name", default="calibration_bench", help="research/results/NAME.json")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.work or Path(tmp) / "calibrate")
        cmd = run_reproduce("--calibrate", "--out", str(out), *(["--seeds", str(args.seeds)] if args.seeds is not None else []),
                            *(["--grid", args.grid] if args.grid else []),
                            *(["--config", args.config] if args.config else []))
        figures = json.loads((out / "calibration.json").read_text())
        figures["table"] = (out / "calibration.md").read_text()
        figures["sweep_command"] = " ".join(cmd[1:])
        figures["wall_s"] = round(time.perf_counter() - start, 1)  # ~0 when --work held a finished sweep
        save(args.name, figures, RESEARCH_RESULTS)


if __name__ == "__main__":
    main()
