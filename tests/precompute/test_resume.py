"""precompute-logits killed with SIGKILL (at a chosen chunk write, see LAUNCHER) and rerun,
alone and as one of two parallel workers: the store equals the session's uninterrupted one array
by array (the top-k ids decoded), and `store verify` passes.

Both runs use --chunk-rows 2 with the session store's --batch-size 10: groups of 5 chunks, so the
engine sees the same batches (rows 0:10, 10:20, 20:24) as the session store's single chunk did.
"""
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import zarr

from helpers import last_json, precompute_args, run_cli

pytestmark = pytest.mark.slow


# Runs the CLI with StoreWriter.write_chunk wrapped so the process SIGKILLs itself at a chosen
# write: before chunk write number KILL_AT (0-based, counted in this process), or, with MID set,
# after that chunk's arrays are written but before its done mark. A kill timed from outside
# raced the background writer (all 12 chunks could land between two polls); this one is exact.
LAUNCHER = """
import os, signal, sys
from kdstream.storage.writer import StoreWriter
kill_at, mid = int(os.environ["KILL_AT"]), os.environ["MID"] == "1"
original, calls = StoreWriter.write_chunk, [0]

class DieOnMark:
    def __setitem__(self, key, value):
        os.kill(os.getpid(), signal.SIGKILL)

def write_chunk(self, c, rows):
    calls[0] += 1
    if calls[0] - 1 == kill_at:
        if not mid:
            os.kill(os.getpid(), signal.SIGKILL)
        self._done = DieOnMark()
    original(self, c, rows)

StoreWriter.write_chunk = write_chunk
from kdstream.cli import main
sys.argv[0] = "kdstream"
main()
"""


def run_killed(teacher_dir, corpus_file, out, kill_at: int, mid: bool, *extra) -> None:
    """precompute-logits on ``out``, SIGKILLed at write ``kill_at`` (see LAUNCHER)."""
    kill_precompute(precompute_args(teacher_dir, corpus_file, out, "--chunk-rows", "2", *extra), kill_at, mid)


def kill_precompute(args, kill_at: int, mid: bool) -> None:
    """precompute-logits ARGS, SIGKILLed at write ``kill_at`` (see LAUNCHER)."""
    env = {**os.environ, "KILL_AT": str(kill_at), "MID": "1" if mid else "0"}
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def done_markers(out) -> set[int]:
    return {int(p.name) for p in (out / "chunk_done" / "c").iterdir() if p.name.isdigit()}


def assert_same_arrays(a, b):
    """Every stored array equal, and every decoded one. The top-k ids are stored as indices into
    a table per chunk, so those two arrays depend on the chunking (one chunk there, 12 here):
    they are compared decoded. The manifest of chunk checksums (one column per chunk) is left out too."""
    from kdstream.storage import open_store

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    names = [n for n in ga.array_keys() if n not in ("chunk_done", "topk_index", "id_table", "manifest_crc32c")]
    assert len(names) == 7
    for name in names:
        assert np.array_equal(ga[name][:], gb[name][:]), name
    da, db = open_store(str(a))[:], open_store(str(b))[:]
    for key in da:
        assert np.array_equal(da[key], db[key]), key


def test_a_killed_precompute_resumes_to_the_uninterrupted_store(tmp_path, teacher_store, teacher_dir, corpus_file):
    out = tmp_path / "resumed.zarr"
    rng = random.Random()
    kill_at, mid = rng.randrange(1, 12), rng.random() < 0.5  # a random write, at a chunk boundary or inside one
    run_killed(teacher_dir, corpus_file, out, kill_at, mid)
    written = done_markers(out)
    assert written == set(range(kill_at)), f"killed at write {kill_at} (mid={mid}): {written}"

    rerun = run_cli(*precompute_args(teacher_dir, corpus_file, out, "--chunk-rows", "2"))
    summary = last_json(rerun.stdout)
    assert summary["complete"] and summary["chunks_resumed"] == len(written)
    assert summary["chunks_written"] == 12 - len(written)
    assert_same_arrays(teacher_store, out)
    verify = run_cli("store", "verify", out)
    assert verify.stdout.strip().splitlines()[-1].startswith("ok:")


def test_two_workers_one_killed_and_rerun_then_finalize(tmp_path, teacher_store, teacher_dir, corpus_file):
    out = tmp_path / "parallel.zarr"
    workers = ("--num-workers", "2", "--worker-index")
    # worker 0 owns groups 0 and 2 (chunks 0-4, 10-11), worker 1 group 1 (chunks 5-9)
    w1 = subprocess.Popen([sys.executable, "-m", "kdstream", *map(str, precompute_args(
        teacher_dir, corpus_file, out, "--chunk-rows", "2", *workers, "1"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_killed(teacher_dir, corpus_file, out, 1, False, *workers, "0")  # worker 0 still has group 2 to score
    assert w1.wait(timeout=300) == 0
    assert set(range(5, 10)) <= done_markers(out) and not {10, 11} & done_markers(out)

    early = run_cli("store", "finalize", out, check=False)
    assert early.returncode == 2 and "Traceback" not in early.stderr
    assert "never written" in early.stderr and "worker index 0 of --num-workers 2" in early.stderr

    rerun = last_json(run_cli(*precompute_args(teacher_dir, corpus_file, out, "--chunk-rows", "2", *workers, "0")).stdout)
    assert rerun["complete"] is False and rerun["chunks_resumed"] >= 1 and "store finalize" in rerun["next"]
    run_cli("store", "finalize", out)
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is True
    assert_same_arrays(teacher_store, out)
    assert run_cli("store", "verify", out).stdout.strip().splitlines()[-1].startswith("ok:")
