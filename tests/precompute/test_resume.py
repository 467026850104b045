"""precompute-logits killed with SIGKILL and rerun, alone and as one of two parallel workers: the
store equals the session's uninterrupted one array by array (the top-k ids decoded), and `store verify` passes.

Both runs use --chunk-rows 2 with the session store's --batch-size 10: groups of 5 chunks, so the
engine sees the same batches (rows 0:10, 10:20, 20:24) as the session store's single chunk did.
"""
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from conftest import last_json, precompute_args, run_cli

pytestmark = pytest.mark.slow


def start(teacher_dir, corpus_file, out, *extra):
    args = precompute_args(teacher_dir, corpus_file, out, "--chunk-rows", "2", *extra)
    return subprocess.Popen([sys.executable, "-m", "kdstream", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_after_marker(proc, out, chunk: int, delay: float) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after chunk ``chunk`` of ``out`` was marked written."""
    marker = out / "chunk_done" / "c" / str(chunk)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before writing its first chunk"
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def done_markers(out) -> set[int]:
    return {int(p.name) for p in (out / "chunk_done" / "c").iterdir() if p.name.isdigit()}


def assert_same_arrays(a, b):
    """Every stored array equal, and every decoded one. The top-k ids are stored as indices into
    a table per chunk, so those two arrays depend on the chunking (one chunk there, 12 here):
    they are compared decoded."""
    from kdstream.storage import open_store

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    names = [n for n in ga.array_keys() if n not in ("chunk_done", "topk_index", "id_table")]
    assert len(names) == 7
    for name in names:
        assert np.array_equal(ga[name][:], gb[name][:]), name
    da, db = open_store(str(a))[:], open_store(str(b))[:]
    for key in da:
        assert np.array_equal(da[key], db[key]), key


def test_a_killed_precompute_resumes_to_the_uninterrupted_store(tmp_path, teacher_store, teacher_dir, corpus_file):
    out = tmp_path / "resumed.zarr"
    delay = random.Random().uniform(0, 0.3)  # a random point after the first chunk is written
    kill_after_marker(start(teacher_dir, corpus_file, out), out, 0, delay)
    written = done_markers(out)
    assert 1 <= len(written) < 12, f"killed {delay:.2f} s after the first chunk: {written}"

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
    w0, w1 = (start(teacher_dir, corpus_file, out, *workers, str(i)) for i in range(2))
    kill_after_marker(w0, out, 0, 0.0)  # worker 0 still has group 2 to score
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
