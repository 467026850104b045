"""The reader's direct chunk path (chunk_io) gives exactly what zarr gives, and refuses what zarr refuses."""
import numpy as np
import pytest
import zarr
from test_store import synthetic, write

from kdstream.errors import KdError
from kdstream.storage import chunk_io, open_store
from kdstream.storage.encoding import cumulative_codes
from kdstream.storage.schema import PER_CHUNK


def test_every_slice_equals_zarr(tmp_path):
    write(tmp_path / "s.zarr", synthetic(10))  # chunks of 4 rows: 0:4, 4:8, 8:10
    store = open_store(str(tmp_path / "s.zarr"))
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert all(p is not None for p in store._plans.values())  # the layout the writer uses is read directly
    assert store._codes_summed  # qdelta codes: summed while slot-major (chunk_io Plan.running_sum)
    for start, stop in [(0, 4), (0, 10), (2, 9), (7, 8), (9, 10), (4, 4)]:
        got = store._fetch(tuple(store._arrays), start, stop)
        for name, value in got.items():
            want = g[name][start // 4 : -(-stop // 4)] if name in PER_CHUNK else g[name][start:stop]
            if stop == start:
                want = want[:0]
            if name == "topk_logprobs" and store._codes_summed:  # qdelta deltas come back summed per row
                want = cumulative_codes(want)
            assert value.dtype == want.dtype and np.array_equal(value, want), (name, start, stop)
            assert value.flags.writeable  # torch.from_numpy needs no copy and warns about none


def test_a_missing_chunk_is_refused_and_a_bad_size_too(tmp_path):
    """A store with chunk_done markers was written with write_empty_chunks: a missing object is a
    lost chunk, never zeros (zarr would read it as the fill value)."""
    write(tmp_path / "s.zarr", synthetic(10))
    (tmp_path / "s.zarr" / "target_rank" / "c" / "1" / "0").unlink()
    store = open_store(str(tmp_path / "s.zarr"))
    store.read(0, 4, ("target_rank",))  # the other chunks still read
    with pytest.raises(KdError, match=r"target_rank chunk 1 \(rows 4:8, file target_rank/c/1/0\) is missing"):
        store.read(3, 9, ("target_rank",))
    with pytest.raises(KdError, match="target_rank chunk 1"):  # store[5] decodes target_logprob from it, among others
        store[5]
    plan = chunk_io.plan(store._arrays["input_ids"])
    with pytest.raises(chunk_io.CorruptChunk, match="expected"):
        chunk_io._decode_into(plan, _buffer(b"\x02\x01\x21\x02" + (7).to_bytes(4, "little") + bytes(8)),
                              np.empty(plan.chunk_bytes, np.uint8))


def test_a_store_without_markers_reads_a_missing_chunk_as_zarr_does(tmp_path):
    """Stores written before chunk_done (format version <= 3, older writers) skipped all-zero chunks:
    there a missing object is the fill value, as zarr reads it."""
    import shutil

    from test_store import as_version_3

    write(tmp_path / "s.zarr", synthetic(10))
    as_version_3(tmp_path / "s.zarr")
    shutil.rmtree(tmp_path / "s.zarr" / "chunk_done")
    (tmp_path / "s.zarr" / "target_rank" / "c" / "1" / "0").unlink()
    store = open_store(str(tmp_path / "s.zarr"))
    assert store.identity is None and not store.strict
    np.testing.assert_array_equal(store._fetch(("target_rank",), 3, 9)["target_rank"],
                                  zarr.open_group(str(tmp_path / "s.zarr"))["target_rank"][3:9])


def test_arrays_of_other_layouts_get_no_plan(tmp_path):
    """Format version 1's plain zstd, or chunks along a second axis: read through zarr
    (test_store.py reads a whole version 1 store that way)."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    g = zarr.open_group(str(tmp_path / "z.zarr"), mode="w", zarr_format=3)
    assert chunk_io.plan(g.create_array("a", shape=(6, 3), chunks=(4, 3), dtype="int32",
                                        compressors=[ZstdCodec()])) is None
    ours = [BloscCodec(cname="zstd", clevel=6, shuffle="shuffle"), Crc32cCodec()]
    assert chunk_io.plan(g.create_array("b", shape=(6, 3), chunks=(4, 3), dtype="int32", compressors=ours)) is not None
    assert chunk_io.plan(g.create_array("c", shape=(6, 3), chunks=(4, 1), dtype="int32", compressors=ours)) is None


def _buffer(body: bytes):
    """A chunk object as the store returns it, with a valid crc32c trailer."""
    import struct

    import google_crc32c
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(body + struct.pack("<I", google_crc32c.value(body)))


def test_a_reads_output_survives_the_next_read(tmp_path):
    """The stored arrays a read decodes (top-k indices, qdelta codes) go through this thread's
    scratch memory, reused by the next read: no output may share it."""
    import test_ragged

    from kdstream.storage import selection as sel

    rows = test_ragged.synthetic()
    n, R = test_ragged.S, test_ragged.R
    top_p = sel.describe("top_p", test_ragged.K, p=0.9)
    for store in (test_ragged.write(tmp_path / "fixed.zarr", rows),
                  test_ragged.write(tmp_path / "ragged.zarr", rows, top_p),
                  test_ragged.write(tmp_path / "fp32.zarr", rows, encoding="fp32"),  # returned as stored
                  test_ragged.write(tmp_path / "fp32-ragged.zarr", rows, top_p, encoding="fp32")):
        first = store.read(0, R)
        kept = {k: v.copy() for k, v in first.items()}
        store.read(R, 2 * R)  # same shapes: the same scratch buffers, refilled
        store.read(1, n)
        for key, value in first.items():
            assert np.array_equal(value, kept[key]), (store.url, key)


def test_local_files_read_in_the_calling_thread_equal_zarrs_async_path(tmp_path):
    """chunk_io.fetch_local (local stores) returns what the event-loop path returns, and the
    same absent chunk."""
    from zarr.core.sync import sync

    write(tmp_path / "s.zarr", synthetic(10))
    (tmp_path / "s.zarr" / "target_rank" / "c" / "1" / "0").unlink()
    store = open_store(str(tmp_path / "s.zarr"))
    plans = {n: p for n, p in store._plans.items() if p is not None}
    for start, stop in [(0, 10), (3, 9), (4, 4)]:
        local = chunk_io.fetch_local(plans, start, stop, frozenset(PER_CHUNK), 4)
        remote = sync(chunk_io.fetch(plans, start, stop, frozenset(PER_CHUNK), 4))
        assert [(n, c) for n, c, _ in local] == [(n, c) for n, c, _ in remote]
        for (n, c, a), (_, _, b) in zip(local, remote):
            assert (a is None) == (b is None), (n, c)
            if a is not None:
                assert bytes(a.as_numpy_array()) == bytes(b.as_numpy_array()), (n, c)
    assert any(raw is None for _, _, raw in chunk_io.fetch_local(plans, 0, 10, frozenset(PER_CHUNK), 4))


def test_kdstreams_readers_keep_freed_memory_unless_told_not_to():
    """storage/memory.py sets glibc's thresholds once per process; KDSTREAM_KEEP_FREED_MEMORY=0
    leaves them alone (each case in a fresh process: the setting lasts the process)."""
    import os
    import subprocess
    import sys

    code = "from kdstream.storage.memory import keep_freed_memory as k; print(k(), k())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "KDSTREAM_KEEP_FREED_MEMORY": "0"}).stdout.split()
    import platform

    assert on == (["True", "True"] if platform.libc_ver()[0] == "glibc" else ["False", "False"])
    assert off == ["False", "False"]
