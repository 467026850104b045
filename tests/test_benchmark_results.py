"""benchmarks/results.py: every saved figure carries its commit, machine and command."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_save_records_commit_machine_and_command(tmp_path):
    # run as a benchmark module would be (python -m …), so the recorded command is the typed one
    code = ("import sys; from pathlib import Path; from benchmarks.results import save; "
            "save('probe', {'ratio': 0.5}, Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, check=True, capture_output=True)
    record = json.loads((tmp_path / "probe.json").read_text())
    assert record["name"] == "probe" and record["figures"] == {"ratio": 0.5}
    assert len(record["commit"]["sha"]) == 40 and isinstance(record["commit"]["dirty"], bool)
    machine = record["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["gpu"] is None  # torch not imported: no GPU query
    assert record["command"].startswith("python")
    assert not list(tmp_path.glob("*.partial"))


def test_benchmarks_edit_no_sys_path():
    # a package run with python -m: no module may reach around it through sys.path
    for path in (ROOT / "benchmarks").rglob("*.py"):
        assert "sys.path" not in path.read_text(), path


def test_results_hold_the_runs_the_docs_quote():
    # benchmarks/results/ keeps what README.md and docs/ link; sweeps and calibration live in
    # benchmarks/research/results/, beside the lab notebook that quotes them
    quoted = "".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    unquoted = [p.name for p in sorted((ROOT / "benchmarks" / "results").iterdir()) if p.name not in quoted]
    assert not unquoted, f"not quoted by README.md or docs/: {unquoted}: quote them or move them to benchmarks/research/results/"
    assert len((ROOT / "docs" / "benchmarks.md").read_text().splitlines()) <= 250  # a page read in five minutes


def test_benchmarks_use_public_seams_only():
    # a benchmark measures what a user can call: no private kdstream names, no patched internals
    # (its own argparse namespace, ``a`` / ``args``, may hold private flags)
    import ast

    found = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdstream"):
                found += [f"{path.name}: imports {a.name}" for a in node.names if a.name.startswith("_")]
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                  and not (isinstance(node.value, ast.Name) and node.value.id in ("a", "args"))):
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert not found, found
