"""The fork server (kdstream/forkserver.py) runs a command as a fresh interpreter would: same exit
code, stdout and stderr; a timeout kills the fork and leaves the server usable; `reproduce`'s stages
(study/stages.py) run through it with the study's own stdout and stderr."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import run_cli


def _both(monkeypatch, *args):
    forked = run_cli(*args, check=False)
    monkeypatch.setenv("KDSTREAM_FORKSERVER", "0")
    fresh = run_cli(*args, check=False)
    monkeypatch.delenv("KDSTREAM_FORKSERVER")
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


STAGES = """
import sys
from pathlib import Path
from kdstream.errors import KdError
from kdstream.study.stages import Stages

st = Stages("t", Path(sys.argv[1]) / "seconds.json")
print("before", flush=True)
st.run("help", False, ["distill", "--help"])
st.run("quiet help", False, ["extract-eval", "--help"], quiet=True)
try:
    st.run("bad", False, ["distill", "--epochs", "many"])
except KdError as exc:
    print("raised:", exc)
print("after")
"""


@pytest.mark.parametrize("server", ["1", "0"])
def test_reproduce_stages_print_where_the_study_prints(tmp_path, server):
    """A stage's stdout follows the study's (dropped when quiet), its stderr too, in order; a failed
    stage raises with its exit code; forked or not (``KDSTREAM_FORKSERVER``), the same."""
    proc = subprocess.run([sys.executable, "-c", STAGES, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "KDSTREAM_FORKSERVER": server})
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.startswith("before\n") and out.rstrip().endswith("after"), out[-2000:]
    assert "Usage: python -m kdstream distill" in out and "extract-eval [OPTIONS]" not in out
    assert "raised: stage bad of t failed (exit 2)" in out
    err = proc.stderr
    assert err.index("[t] help: kdstream distill --help") < err.index("[t] bad: kdstream distill --epochs many")
    assert "Invalid value for '--epochs'" in err.split("[t] bad:")[1]
    assert set(json.loads((tmp_path / "seconds.json").read_text())) == {"help", "quiet help"}
