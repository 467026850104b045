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
