"""Fault-injection suite: each test breaks one thing (a file, an option, a path) the way a careless
or hostile user would, runs the real command, and asserts the exit status, the one-line message,
and that no input and no earlier output changed (``digest`` before and after)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (a file: itself); {} when absent."""
    root = Path(root)
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def digest():
    return tree_digest


def one_line_error(proc) -> str:
    """The command failed with exit 2 and printed exactly one ``error: …`` line and no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.fixture
def error_line():
    return one_line_error
