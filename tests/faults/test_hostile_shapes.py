"""A small hostile file may cost no more than the honest store it claims to be: an array's zarr.json
re-declared with a huge shape (nothing behind it) is refused before anything is read. Each command
runs as a real process limited to 1.5 GiB of data (the libraries a command imports take up to ~0.5
GiB of it, the honest store ~60 MB) and a timeout; before the check, each one allocated 5.9 GB or
more, or looped over 3e9 chunks."""
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_distill_faults import distill_args

from helpers import run_cli

HUGE = 3_000_000_000
LIMIT = 1536 << 20  # bytes of data a command may take: imports (torch, transformers, pandas) + the honest store, 3x over


@pytest.fixture
def store(teacher_store, tmp_path) -> Path:
    return Path(shutil.copytree(teacher_store, tmp_path / "teacher.zarr"))


def declare(store: Path, array: str, shape: list[int]) -> None:
    """Re-declare ``array``'s shape in its zarr.json (its chunk grid and chunks as they were)."""
    path = store / array / "zarr.json"
    meta = json.loads(path.read_text())
    meta["shape"] = shape
    path.write_text(json.dumps(meta))


def run_bounded(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m kdstream ARGS` in a fresh process limited to LIMIT bytes of data and ``timeout`` s
    (subprocess.TimeoutExpired past it)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (LIMIT, LIMIT))

    return subprocess.run([sys.executable, "-m", "kdstream", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env={**os.environ, "TQDM_DISABLE": "1"})


def test_the_honest_store_runs_within_the_limit(store, tmp_path):
    for args in (("store", "verify", store), ("store", "info", store), ("store", "stats", store),
                 ("store", "tokenizer", store, tmp_path / "tok")):
        proc = run_bounded(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_tokenizer_array_declared_larger_is_refused_before_it_is_read(store, tmp_path, error_line):
    """Issue 36 case 7: `store tokenizer` and `store verify` reached 5.9 GB before comparing sizes."""
    declare(store, "tokenizer/tokenizer.json", [HUGE])
    line = error_line(run_bounded("store", "tokenizer", store, tmp_path / "tok"))
    assert "tokenizer file tokenizer.json" in line and f"shape ({HUGE},)" in line, line
    assert not (tmp_path / "tok").exists()
    verify = run_bounded("store", "verify", store)
    assert verify.returncode == 1 and "corrupt: tokenizer file tokenizer.json" in verify.stdout, verify.stdout


def test_a_manifest_declared_larger_is_refused_before_it_is_read(store, error_line):
    """Issue 36 case 7: `store info` passed 8.5 GB on a manifest re-declared [9, 1e8] and did not finish."""
    rows = json.loads((store / "manifest_crc32c" / "zarr.json").read_text())["shape"][0]
    declare(store, "manifest_crc32c", [rows, 100_000_000])
    info = run_bounded("store", "info", store)
    assert info.returncode == 0 and "identity: none: store" in info.stdout, info.stderr[-2000:]
    assert "manifest_crc32c has shape" in info.stdout, info.stdout
    assert "manifest_crc32c has shape" in error_line(run_bounded("store", "stats", store))
    verify = run_bounded("store", "verify", store)
    assert verify.returncode == 1 and "problem: manifest_crc32c has shape" in verify.stdout, verify.stdout


def test_chunk_markers_declared_larger_are_refused_before_they_are_read(store, student_init_dir, tmp_path,
                                                                       error_line):
    """Issue 36 case 7: `chunk_done` re-declared [3e9]: verify and distill did not finish."""
    declare(store, "chunk_done", [HUGE])
    verify = run_bounded("store", "verify", store)
    assert verify.returncode == 1 and f"problem: chunk_done has shape ({HUGE},)" in verify.stdout, verify.stdout
    out = tmp_path / "run"
    line = error_line(run_cli(*distill_args(store, student_init_dir, out), check=False, timeout=300))
    assert "chunk_done has shape" in line, line
    assert not out.exists()


@pytest.mark.parametrize("array", ["input_ids", "id_table", "topk_logprobs"])
def test_a_data_array_declared_larger_is_refused_before_it_is_read(store, array, error_line):
    declare(store, array, [HUGE, *json.loads((store / array / "zarr.json").read_text())["shape"][1:]])
    assert f"{array} has shape ({HUGE}," in error_line(run_bounded("store", "stats", store))
    verify = run_bounded("store", "verify", store)
    assert verify.returncode == 1 and f"problem: {array} has shape ({HUGE}," in verify.stdout, verify.stdout
