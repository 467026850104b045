"""Chunk-by-chunk writing: done markers, resume, two writer processes on one store, finalize."""
import multiprocessing as mp

import numpy as np
import pytest
import zarr
from test_verify import ATTRS, K, L, V, synthetic

from kdstream.errors import KdError
from kdstream.storage import StoreWriter, open_store
from kdstream.storage.background import BackgroundWriter
from kdstream.storage.chunks import chunks_per_group, owned_groups, owner
from kdstream.storage.finalize import finalize_store
from kdstream.storage.verify import verify_store

N, ROWS = 10, 3  # 10 examples in chunks of 3: 0:3, 3:6, 6:9, 9:10


def writer(path, attrs=ATTRS, **kw):
    return StoreWriter(str(path), num_examples=N, seq_len=L, k=K, vocab_size=V, attrs=attrs, chunk_rows=ROWS, **kw)


def chunk(rows, c):
    return {k: v[c * ROWS : (c + 1) * ROWS] for k, v in rows.items()}


def arrays(path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return {name: g[name][:] for name in g.array_keys()}


def _worker(path, index, workers):  # a separate process: its own writer, its own chunks
    rows = synthetic(N)
    w = writer(path)
    for group in owned_groups(w.num_chunks, 1, workers, index):
        for c in group:
            w.write_chunk(c, chunk(rows, c))


def test_two_processes_write_one_store_like_one_writer(tmp_path):
    ctx = mp.get_context("spawn")  # started together: both race to create the group and arrays
    procs = [ctx.Process(target=_worker, args=(tmp_path / "p.zarr", i, 2)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert not open_store(str(tmp_path / "p.zarr"), require_complete=False).attrs["complete"]
    manifest = finalize_store(str(tmp_path / "p.zarr"))
    assert manifest["chunks"] == 4 and manifest["examples"] == N and not manifest["already_complete"]
    assert verify_store(str(tmp_path / "p.zarr")).ok

    one = writer(tmp_path / "one.zarr")
    one.append(synthetic(N))
    one.finalize()
    a, b = arrays(tmp_path / "p.zarr"), arrays(tmp_path / "one.zarr")
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_the_writer_owns_resume_a_group_of_chunks_at_a_time(tmp_path):
    """write_chunks writes a group's chunks from the group's rows, skipping those already done;
    refresh_resumed sees the chunks another writer of the store finished since opening."""
    rows = synthetic(N)
    w, other = writer(tmp_path / "s.zarr"), writer(tmp_path / "s.zarr")
    other.write_chunk(1, chunk(rows, 1))
    assert w.resumed == set() and w.refresh_resumed() == {1}
    group = range(0, 3)
    assert w.rows_of(group) == slice(0, 9) and w.rows_of(range(3, 4)) == slice(9, 10)
    broken = {k: np.zeros_like(v) for k, v in rows.items()}  # chunk 1 of these rows would differ: never written
    w.write_chunks(group, {k: np.concatenate([v[0:3], broken[k][3:6], v[6:9]]) for k, v in rows.items()})
    w.write_chunks(range(3, 4), {k: v[9:10] for k, v in rows.items()})
    w.finalize()
    one = writer(tmp_path / "one.zarr")
    one.append(rows)
    one.finalize()
    a, b = arrays(tmp_path / "s.zarr"), arrays(tmp_path / "one.zarr")
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_a_rerun_resumes_only_a_store_started_the_same_way(tmp_path):
    rows = synthetic(N)
    w = writer(tmp_path / "s.zarr")
    w.write_chunk(0, chunk(rows, 0))
    w.write_chunk(2, chunk(rows, 2))
    again = writer(tmp_path / "s.zarr")  # same attributes: resumed, the written chunks kept
    assert again.resumed == {0, 2}
    for c in (1, 3):
        again.write_chunk(c, chunk(rows, c))
    with pytest.raises(KdError, match=r"options\.top_k: the store has 4, this run 8.*--overwrite"):
        writer(tmp_path / "s.zarr", attrs={**ATTRS, "options": {**ATTRS["options"], "top_k": 8}})
    # where the teacher lives is not compared (a worker may see it under another path); its hash is
    moved = {**ATTRS, "teacher": {**ATTRS["teacher"], "path": "/elsewhere/t"}}
    assert writer(tmp_path / "s.zarr", attrs=moved).resumed == {0, 1, 2, 3}
    with pytest.raises(KdError, match="teacher.config_sha256"):
        writer(tmp_path / "s.zarr", attrs={**ATTRS, "teacher": {**ATTRS["teacher"], "config_sha256": "beef"}})
    again.finalize()
    with pytest.raises(KdError, match="complete store already exists"):
        writer(tmp_path / "s.zarr")
    assert writer(tmp_path / "s.zarr", overwrite=True).resumed == set()  # --overwrite starts over


def test_finalize_and_verify_name_the_chunks_never_written(tmp_path):
    rows = synthetic(N)
    w = writer(tmp_path / "s.zarr")
    for c in (0, 3):
        w.write_chunk(c, chunk(rows, c))
    report = verify_store(str(tmp_path / "s.zarr"))
    assert not report.ok and report.corrupt == []
    assert "2 of 4 chunks never written (they would read as zeros): chunk 1 (rows 3:6), 2 (rows 6:9)" in report.problems
    with pytest.raises(KdError, match=r"2 of 4 chunks were never written: chunk 1 \(rows 3:6\), 2 \(rows 6:9\)"):
        finalize_store(str(tmp_path / "s.zarr"))
    assert not zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs["complete"]  # still incomplete
    # a chunk killed between its data and its marker counts as not written, and is written again
    w.write_chunk(1, chunk(rows, 1))
    zarr.open_group(str(tmp_path / "s.zarr"))["input_ids"][6:9] = rows["input_ids"][6:9]  # data, no marker
    assert writer(tmp_path / "s.zarr").resumed == {0, 1, 3}
    w.write_chunk(2, chunk(rows, 2))
    assert finalize_store(str(tmp_path / "s.zarr"))["chunks"] == 4
    assert finalize_store(str(tmp_path / "s.zarr"))["already_complete"]
    assert verify_store(str(tmp_path / "s.zarr")).ok


def test_verify_finds_unwritten_chunks_of_a_store_without_markers(tmp_path):
    """Stores written before chunk_done: a chunk with no target_rank file (ranks are >= 1) was never written."""
    import shutil

    rows = synthetic(N)
    w = writer(tmp_path / "s.zarr")
    for c in (0, 1, 3):
        w.write_chunk(c, chunk(rows, c))
    shutil.rmtree(tmp_path / "s.zarr" / "chunk_done")
    (tmp_path / "s.zarr" / "doc_index" / "c" / "0").unlink()  # all zeros: older writers kept no file
    report = verify_store(str(tmp_path / "s.zarr"))
    assert report.problems == [
        "store is incomplete (attribute complete is not true): its precompute did not finish",
        "1 of 4 chunks never written (they would read as zeros): chunk 2 (rows 6:9)"]


def test_a_marked_chunk_whose_file_was_lost_is_not_finalized(tmp_path):
    rows = synthetic(N)
    w = writer(tmp_path / "s.zarr")
    for c in range(4):
        w.write_chunk(c, chunk(rows, c))
    (tmp_path / "s.zarr" / "doc_index" / "c" / "2").unlink()
    with pytest.raises(KdError, match=r"chunks marked written have no file: doc_index chunk 2 \(rows 6:9\)"):
        finalize_store(str(tmp_path / "s.zarr"))


def test_workers_share_out_every_chunk_once_in_groups_independent_of_the_worker_count():
    chunks, group = 23, chunks_per_group(batch_size=10, chunk_rows=3)  # groups of 3 chunks (9 rows)
    assert group == 3 and chunks_per_group(10, 16) == 1
    single = owned_groups(chunks, group, 1, 0)
    for workers in (1, 2, 3, 5):
        shares = [owned_groups(chunks, group, workers, i) for i in range(workers)]
        assert sorted((g for share in shares for g in share), key=lambda g: g.start) == single
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        for i, share in enumerate(shares):
            assert all(owner(c, group, workers) == i for g in share for c in g)


def test_background_errors_are_raised_in_the_callers_thread():
    done = []

    def fail(x):
        raise RuntimeError(f"disk full at {x}")

    with pytest.raises(RuntimeError, match="disk full at 1"), BackgroundWriter(depth=1) as bg:
        bg.submit(done.append, 0)
        bg.submit(fail, 1)
        bg.submit(done.append, 2)  # never runs: jobs after a failure are dropped
    assert done == [0]
