"""The per-worker owner mark of a store (storage/lock.py), on real stores on disk: one run per
share at a time, parallel workers together, a dead run's mark taken over, and nothing that
Zarr, `verify` or a finished store sees."""
import json
import socket
import subprocess
import sys
import time
import warnings

import pytest
import zarr

from kdstream.errors import KdError
from kdstream.storage.lock import OWNERS, STALE_AFTER_S, Holder, WorkerLock, holders, live_holders


@pytest.fixture
def store(tmp_path):
    """A real Zarr group with a chunk_done array, as StoreWriter leaves it before the first chunk."""
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3, attributes={"format": "kdstream-logits"})
    group.create_array("chunk_done", shape=(4,), chunks=(1,), dtype="uint8", fill_value=0)
    return tmp_path / "s.zarr"


def plant(store, name: str, **fields) -> None:
    """A mark written by some other run (another host, a dead pid, an old heartbeat)."""
    now = time.time()
    mark = {"pid": 1, "host": "elsewhere", "token": "other", "worker_index": 0, "num_workers": 1,
            "started": now, "heartbeat": now, **fields}
    (store / OWNERS).mkdir(parents=True, exist_ok=True)
    (store / OWNERS / name).write_text(json.dumps(mark))


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_second_holder_of_the_same_share_is_refused_and_the_mark_goes_at_the_end(store):
    with WorkerLock(str(store), 0, 1):
        assert [h.pid for h in live_holders(str(store))] == [WorkerLock(str(store), 0, 1).me.pid]
        with pytest.raises(KdError, match=r"another precompute-logits is writing .*pid \d+ on"):
            WorkerLock(str(store), 0, 1).acquire()
    assert holders(str(store)) == [] and not (store / OWNERS).exists()


def test_parallel_workers_hold_disjoint_shares_but_not_overlapping_ones(store):
    with WorkerLock(str(store), 0, 2), WorkerLock(str(store), 1, 2):
        assert len(live_holders(str(store))) == 2
        for index, workers in ((0, 1), (1, 4), (0, 2)):  # all chunks; a share of worker 1 of 2; the same share
            with pytest.raises(KdError, match="another precompute-logits"):
                WorkerLock(str(store), index, workers).acquire()
    assert not (store / OWNERS).exists()


@pytest.mark.parametrize("mark, taken_over", [
    ({"host": socket.gethostname(), "pid": "dead"}, True),  # killed on this host
    ({"heartbeat": time.time() - STALE_AFTER_S - 5}, True),  # another host, silent too long
    ({}, False),  # another host, beating now
])
def test_a_dead_runs_mark_is_taken_over_a_live_one_is_not(store, mark, taken_over):
    if mark.get("pid") == "dead":
        mark["pid"] = dead_pid()
    plant(store, "0-of-1.json", **mark)
    lock = WorkerLock(str(store), 0, 1)
    if taken_over:
        with lock:
            assert json.loads((store / OWNERS / "0-of-1.json").read_text())["token"] == lock.me.token
    else:
        with pytest.raises(KdError, match="elsewhere"):
            lock.acquire()
        assert json.loads((store / OWNERS / "0-of-1.json").read_text())["token"] == "other"  # untouched


def test_zarr_and_the_done_markers_do_not_see_the_mark(store):
    from kdstream.storage.chunks import done_chunks

    group = zarr.open_group(str(store), mode="r+")
    group["chunk_done"][1:2] = 1
    with WorkerLock(str(store), 0, 1), warnings.catch_warnings():
        warnings.simplefilter("error")  # zarr warns about any top-level object not an array or group
        reopened = zarr.open_group(str(store), mode="r")
        assert [name for name, _ in reopened.members()] == ["chunk_done"]
        assert done_chunks(reopened) == {1}
        assert list(reopened["chunk_done"][:]) == [0, 1, 0, 0]


def test_holder_overlap_follows_the_strided_shares():
    from kdstream.storage.chunks import owned_groups

    for n, i in ((2, 0), (3, 1), (4, 2), (6, 3)):
        held = Holder(1, "h", "t", i, n, 0.0, 0.0)
        for m in range(1, 7):
            for j in range(m):
                shared = {tuple(g) for g in owned_groups(60, 1, n, i)} & {tuple(g) for g in owned_groups(60, 1, m, j)}
                assert held.overlaps(j, m) == bool(shared), (n, i, m, j)


def test_the_writer_claims_its_share_before_writing_anything(teacher_dir, tmp_path):
    """StoreWriter's claim runs once the group exists and before any array or tokenizer file is
    written: a second run refused there has touched nothing of the store the first one writes."""
    from benchmarks.fixtures import topk_rows
    from kdstream.storage import StoreWriter
    from kdstream.storage import tokenizer_files as tf
    from kdstream.storage.verify import verify_store
    from kdstream.text.tokenizers import load_tokenizer, tokenizer_fingerprint

    fp = tokenizer_fingerprint(load_tokenizer(teacher_dir))
    files, _ = tf.collect(teacher_dir, fp["sha256"])
    url = str(tmp_path / "s.zarr")
    seen = []

    def writer(claim):
        return StoreWriter(url, num_examples=8, seq_len=8, k=4, vocab_size=300, attrs={"tokenizer": fp},
                           chunk_rows=4, tokenizer_files=files, claim=claim)

    def look():
        seen.append(sorted(p.name for p in (tmp_path / "s.zarr").iterdir()))

    first = WorkerLock(url, 0, 1)
    w = writer(lambda: (look(), first.acquire()))
    assert seen == [["zarr.json"]]  # the group only: no arrays, no tokenizer/ yet
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "s.zarr").rglob("*") if OWNERS not in str(p)}
    with pytest.raises(KdError, match="another precompute-logits is writing"):
        writer(WorkerLock(url, 0, 1).acquire)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "s.zarr").rglob("*") if OWNERS not in str(p)} == before
    rows = topk_rows(8, 8, 4, 300)
    for c in (0, 1):
        w.write_chunk(c, {key: v[4 * c: 4 * (c + 1)] for key, v in rows.items()})
    first.release()
    w.finalize()
    assert verify_store(url).ok
