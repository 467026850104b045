"""Save a benchmark's figures with what is needed to trust them: the commit, the machine, the command.

Every benchmark ends with ``save("<name>", figures)``, which writes
``benchmarks/results/<name>.json`` and prints the same JSON. docs/benchmarks.md quotes only
figures that have such a file.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"  # the runs docs/benchmarks.md quotes
RESEARCH_RESULTS = RESULTS.parent / "research" / "results"  # sweeps and calibration (research/NOTEBOOK.md)
ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit() -> dict:
    """HEAD and whether the code that makes the figures (src/, benchmarks/ but its results,
    pyproject.toml) differs from it: edits to docs do not change a figure."""
    dirty = _git("status", "--porcelain", "--", "src", "benchmarks", ":(exclude)benchmarks/results", "pyproject.toml")
    return {"sha": _git("rev-parse", "HEAD") or None, "dirty": bool(dirty)}


def machine() -> dict:
    """CPU model and cores, load average at the end of the run, GPU if torch sees one."""
    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = None
    if "torch" in sys.modules:  # only ask torch when the benchmark used it: importing it costs seconds
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            gpu = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "gpu": gpu, "python": platform.python_version()}


def command() -> str:
    """The command line as typed: ``python -m benchmarks.<name> ARGS``."""
    module = sys.modules["__main__"].__spec__
    head = ["python", "-m", module.name] if module is not None else ["python", sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


def save(name: str, figures: dict, out_dir: Path = RESULTS) -> Path:
    """Write ``out_dir/<name>.json`` ({name, figures, commit, machine, command, finished}) and print it."""
    record = {"name": name, "figures": figures, "commit": commit(), "machine": machine(), "command": command(),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
    print(json.dumps(record, indent=1))
    return path
