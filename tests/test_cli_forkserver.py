"""The tests' fork server (tests/cli_forkserver.py) runs a command as a fresh interpreter would:
same exit code, stdout and stderr; a timeout kills the fork and leaves the server usable."""
from __future__ import annotations

import subprocess

import pytest
from helpers import run_cli


def _both(monkeypatch, *args):
    forked = run_cli(*args, check=False)
    monkeypatch.setenv("KDSTREAM_TEST_FORKSERVER", "0")
    fresh = run_cli(*args, check=False)
    monkeypatch.delenv("KDSTREAM_TEST_FORKSERVER")
    return forked, fresh


@pytest.mark.parametrize("case", ["help", "bad option", "missing store"])
def test_a_forked_command_answers_as_a_fresh_interpreter(monkeypatch, tmp_path, case):
    args = {"help": ["distill", "--help"], "bad option": ["distill", "--epochs", "many"],
            "missing store": ["distill", "--logits-store", tmp_path / "missing.zarr", "--model", tmp_path / "none",
                              "--out", tmp_path / "out"]}[case]
    forked, fresh = _both(monkeypatch, *args)
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert (forked.returncode == 0) == (case == "help")
    assert not (tmp_path / "out").exists()


def test_a_timeout_kills_the_fork_and_the_server_goes_on(tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli("distill", "--logits-store", tmp_path / "missing.zarr", "--model", tmp_path / "none",
                "--out", tmp_path / "out", timeout=0.01)
    assert run_cli("--help").returncode == 0
