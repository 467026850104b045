"""`kdstream reproduce --find-regime` as a benchmark: the search on a corpus, then the whole study
at the point it finds, saved with the command, commit and machine (benchmarks/results/NAME.json):
every point's settings, counts, rates, stage seconds (0 for the stages a point shared with an
earlier one) and the reason for the next; the point found (or why the search stopped); the
study's verdicts.

The search runs as the CLI runs it (one subprocess); --work keeps its directory, and a rerun
over a finished --work only re-reads it (every stage is skipped as done).

    OMP_NUM_THREADS=2 python -m benchmarks.find_regime_bench --config C [--max-points N] [--work DIR] [--name NAME]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import save


def _points(record: dict) -> list[dict]:
    out = []
    for row in record["points"]:
        seconds = [sum(s["stage_seconds"].values()) for s in row["seeds"]]
        out.append({k: row[k] for k in ("point", "settings", "examples", "memorized", "rate", "student_min", "next",
                                        "shared_teacher_with")} | {"stage_seconds": round(sum(seconds), 1)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="Study YAML: the search's base config (default: the embedded one)")
    parser.add_argument("--max-points", type=int, default=10)
    parser.add_argument("--seeds", type=int, help="Seeds per point (default: the config's)")
    parser.add_argument("--work", help="The search's --out (kept; a finished one is only re-read)")
    parser.add_argument("--name", default="find_regime_bench", help="results/NAME.json")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.work or Path(tmp) / "find-regime")
        cmd = [sys.executable, "-m", "kdstream", "reproduce", "--find-regime", "--out", str(out),
               "--max-points", str(args.max_points), *(["--config", args.config] if args.config else []),
               *(["--seeds", str(args.seeds)] if args.seeds is not None else [])]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
        if proc.returncode not in (0, 1):  # 1: no point found, the record says why
            raise SystemExit(f"kdstream reproduce --find-regime failed: {proc.stderr[-2000:]}")
        record = json.loads((out / "search" / "search.json").read_text())
        figures = {
            "search_command": " ".join(cmd[1:]),
            "exit_code": proc.returncode,
            "wall_s": round(time.perf_counter() - start, 1),  # ~0 when --work held a finished search
            "lines": [line for line in proc.stdout.splitlines() if line.startswith("[find-regime]")],
            "examples": record["examples"],
            "points": _points(record),
            "found": record["found"],
            "stopped": record["stopped"],
            "base": record["base"],
            "table": (out / "search" / "search.md").read_text(),
        }
        if (out / "study.json").exists():
            study = json.loads((out / "study.json").read_text())
            figures["study_seconds"] = round(sum(sum(s["stage_seconds"].values()) for s in study["seeds"]), 1)
            figures["verdicts"] = {f["finding"]: f["verdict"] for f in study["findings"]}
            figures["reproduced"] = sum(f["verdict"] == "reproduced" for f in study["findings"])
            figures["memorized"] = study["aggregate"].get("memorized")
        save(args.name, figures)


if __name__ == "__main__":
    main()
