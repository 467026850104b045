"""`make demo` as a newcomer runs it (issue 19's ≤ 20 min target): the committed HEAD cloned into a
temporary folder, `make install` (a new virtual environment, every dependency from the package
registry) and then `make demo` (the embedded miniature, one seed), each timed, with the study's
own per-stage seconds (`runs/demo/seed-0/stage_seconds.json`) and its verdict line.

    python -m benchmarks.demo_bench [--keep DIR]

The clone is removed at the end unless --keep names a folder to clone into.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import ROOT, save


def _timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="Clone into this (new) folder and keep it")
    args = parser.parse_args()
    tmp = None if args.keep else tempfile.mkdtemp(prefix="demo_bench.")
    clone = Path(args.keep) if args.keep else Path(tmp) / "project"
    if clone.exists():
        sys.exit(f"{clone} exists: --keep takes a folder the bench creates")
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        install_s = _timed(["make", "install"], clone)
        demo_s = _timed(["make", "demo"], clone)
        stages = json.loads((clone / "runs/demo/seed-0/stage_seconds.json").read_text())
        study = (clone / "runs/demo/study.md").read_text()
        verdict = next((line for line in study.splitlines() if line.startswith("Reproduced here")), None)
        figures = {
            "install_s": round(install_s, 1), "demo_s": round(demo_s, 1), "total_s": round(install_s + demo_s, 1),
            "total_min": round((install_s + demo_s) / 60, 2), "target_min": 20,
            "met": install_s + demo_s <= 20 * 60, "stage_seconds": stages,
            "stages_total_s": round(sum(stages.values()), 1), "verdict": verdict.split(" (")[0] if verdict else None,
            # set on this machine (and its CI): Python caches no bytecode on import, so what
            # `make install` byte-compiles is all a process gets
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        }
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    save("demo_bench", figures)


if __name__ == "__main__":
    main()
