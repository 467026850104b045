import json

import numpy as np
import pytest
import zarr

from benchmarks.fixtures import topk_rows, write_rows
from helpers import as_version_3  # noqa: F401  (re-exported: test_verify, test_chunk_io, test_union)
from kdstream.errors import KdError
from kdstream.storage import StoreWriter, open_store

L, K, V = 16, 4, 300


def synthetic(n, seed=0):
    return topk_rows(n, L, K, V, seed=seed, first_id=100)


def write(path, rows, chunk_rows=4, finalize=True, **kw):
    return write_rows(path, rows, vocab=V, chunk_rows=chunk_rows, attrs={"tokenizer": {"sha256": "x"}}, batch=3,
                      finalize=finalize, **kw)


def test_roundtrip_random_access_and_slices(tmp_path):
    rows = synthetic(10)
    write(tmp_path / "s.zarr", rows)
    store = open_store(str(tmp_path / "s.zarr"))
    assert len(store) == 10 and store.attrs["complete"] is True and store.attrs["k"] == K
    one = store[7]
    assert one["input_ids"].shape == (L,) and one["topk_ids"].shape == (L - 1, K)
    np.testing.assert_array_equal(one["topk_ids"], rows["topk_ids"][7])
    part = store[2:9]
    e = store.attrs["encoding"]  # qdelta: within 0.0096 nats (top-k), 3.8e-5 (target)
    bound = {"topk_logprobs": e["max_abs_error"] + 1e-6, "target_logprob": e["target_max_abs_error"]}
    for key, value in rows.items():
        atol = bound.get(key, 0)  # ids, ranks and the rest exact
        np.testing.assert_allclose(part[key], value[2:9], rtol=0, atol=atol, err_msg=key)
    # the decoded top-k + tail is a distribution whose tail is the teacher's (to exp(±shift_scale / 2))
    np.testing.assert_allclose(np.exp(part["topk_logprobs"].astype(np.float64)).sum(-1) + part["tail_mass"], 1.0,
                               atol=1e-5)
    np.testing.assert_allclose(part["tail_mass"], 1 - np.exp(rows["topk_logprobs"][2:9].astype(np.float64)).sum(-1),
                               atol=np.expm1(e["shift_scale"] / 2) + 1e-6)
    assert part["topk_logprobs"].dtype == np.float32 and part["topk_ids"].dtype == np.int64
    # ids (as indices into each chunk's id table) are stored in the smallest width the vocabulary allows
    assert str(zarr.open_group(str(tmp_path / "s.zarr"))["topk_index"].dtype) == "uint16"


def test_an_unfinished_store_is_refused(tmp_path):
    write(tmp_path / "s.zarr", synthetic(10), finalize=False)
    with pytest.raises(KdError, match="incomplete"):
        open_store(str(tmp_path / "s.zarr"))


def test_a_flipped_byte_is_refused_naming_the_array(tmp_path):
    write(tmp_path / "s.zarr", synthetic(10))
    chunk = tmp_path / "s.zarr" / "topk_logprobs" / "c" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    store = open_store(str(tmp_path / "s.zarr"))
    store[0:4]  # an intact chunk still reads
    with pytest.raises(KdError, match="corrupt chunk in topk_logprobs"):
        store[4:8]


def test_a_complete_store_is_not_overwritten_by_accident(tmp_path):
    write(tmp_path / "s.zarr", synthetic(4))
    with pytest.raises(KdError, match="--overwrite"):
        write(tmp_path / "s.zarr", synthetic(4))
    write(tmp_path / "s.zarr", synthetic(4, seed=1), overwrite=True)


def test_not_a_store(tmp_path):
    with pytest.raises(KdError, match="no logit store"):
        open_store(str(tmp_path / "nothing.zarr"))
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(KdError, match="not a kdstream logit store"):
        open_store(str(tmp_path / "other.zarr"))
    meta = json.loads((tmp_path / "other.zarr" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3


def test_a_format_version_1_store_still_reads(tmp_path):
    """Stores written before the compact encoding (fp32 logprobs, int32 ranks, no tail_mass)."""
    rows = synthetic(6)
    g = zarr.open_group(str(tmp_path / "v1.zarr"), mode="w", zarr_format=3, attributes={
        "format": "kdstream-logits", "format_version": 1, "num_examples": 6, "seq_len": L, "k": K,
        "vocab_size": V, "chunk_rows": 4, "complete": True})
    dtypes = {"input_ids": "uint16", "example_id": "int64", "doc_index": "int64", "topk_ids": "uint16",
              "topk_logprobs": "float32", "target_logprob": "float32", "target_rank": "int32"}
    for name, dtype in dtypes.items():
        value = np.asarray(rows[name]).astype(dtype)
        g.create_array(name, shape=value.shape, chunks=(4, *value.shape[1:]), dtype=dtype)[:] = value
    store = open_store(str(tmp_path / "v1.zarr"))
    got = store[0:6]
    for key, value in rows.items():
        np.testing.assert_array_equal(got[key], np.asarray(value).astype(dtypes[key]).astype(got[key].dtype), key)
    np.testing.assert_allclose(got["tail_mass"], 1 - np.exp(rows["topk_logprobs"].astype(np.float64)).sum(-1),
                               atol=1e-6)
    assert store.read(0, 2, ("tail_mass",))["tail_mass"].shape == (2, L - 1)


def test_a_format_version_2_store_still_reads(tmp_path):
    """Stores of the first compact encoding: raw uint16 ids, qdelta codes at 1/128 nat renormalised to a
    float32 tail_mass, float32 target_logprob, blosc zstd 5."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    from kdstream.storage import encoding as enc

    rows = synthetic(6)
    scale = 1 / 128
    g = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=3, attributes={
        "format": "kdstream-logits", "format_version": 2, "num_examples": 6, "seq_len": L, "k": K,
        "vocab_size": V, "chunk_rows": 4, "complete": True, "targets": "topk",
        "encoding": {"topk_logprobs": "qdelta", "scale": scale, "max_abs_error": scale}})
    stored = {"input_ids": rows["input_ids"].astype("uint16"), "example_id": rows["example_id"],
              "doc_index": rows["doc_index"], "topk_ids": rows["topk_ids"].astype("uint16"),
              "topk_logprobs": enc.encode_topk(rows["topk_logprobs"], scale),
              "tail_mass": enc.tail_mass(rows["topk_logprobs"]),
              "target_logprob": rows["target_logprob"].astype("float32"),
              "target_rank": rows["target_rank"].astype("uint16")}
    for name, value in stored.items():
        g.create_array(name, shape=value.shape, chunks=(4, *value.shape[1:]), dtype=value.dtype,
                       compressors=[BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec()])[:] = value
    store = open_store(str(tmp_path / "v2.zarr"))
    got = store[0:6]
    for key, value in rows.items():
        atol = scale + 1e-6 if key == "topk_logprobs" else 0
        np.testing.assert_allclose(got[key], value, rtol=0, atol=atol, err_msg=key)
    np.testing.assert_allclose(got["tail_mass"], stored["tail_mass"], rtol=0, atol=0)
    np.testing.assert_allclose(np.exp(got["topk_logprobs"].astype(np.float64)).sum(-1) + got["tail_mass"], 1, atol=1e-5)
    assert store.read(1, 5, ("topk_ids",))["topk_ids"].shape == (4, L - 1, K)


def test_a_version_3_store_from_the_earlier_writer_still_reads(tmp_path):
    """Stores written before the shift was chosen with the codes: scale 1/104, the shift computed after
    rounding them (encoding.shift_codes), max_abs_error = scale * (1 + 1/2048). Same arrays, same decoding."""
    from kdstream.storage import encoding as enc

    rows = synthetic(6)
    write(tmp_path / "old.zarr", rows)
    as_version_3(tmp_path / "old.zarr")
    g = zarr.open_group(str(tmp_path / "old.zarr"), mode="r+")
    scale, steps = 1 / 104, enc.SHIFT_STEPS
    lp = rows["topk_logprobs"].astype(np.float32)
    d = enc.encode_topk(lp, scale)
    cum = enc.cumulative_codes(d)
    g["topk_logprobs"][:] = d
    g["topk_shift"][:] = enc.shift_codes(cum, enc.tail_mass(lp), scale, scale / steps)
    g["target_code"][:] = enc.encode_target(rows["target_logprob"], cum, rows["target_rank"], scale / enc.TARGET_STEPS)
    g.attrs["encoding"] = {**g.attrs["encoding"], "scale": scale, "shift_scale": scale / steps,
                           "target_scale": scale / enc.TARGET_STEPS, "max_abs_error": scale * (1 + 1 / 2048),
                           "target_max_abs_error": scale / enc.TARGET_STEPS}
    got = open_store(str(tmp_path / "old.zarr"))[0:6]
    np.testing.assert_allclose(got["topk_logprobs"], lp, rtol=0, atol=scale * (1 + 1 / 2048) + 1e-6)
    np.testing.assert_allclose(got["target_logprob"], rows["target_logprob"], rtol=0, atol=scale / enc.TARGET_STEPS)
    np.testing.assert_allclose(got["tail_mass"], enc.tail_mass(lp), rtol=0, atol=1e-5)


def test_the_same_rows_give_the_same_bytes(tmp_path):
    """Same input ⇒ same chunk files, whatever the batching (id tables and codes are deterministic)."""
    import os

    rows = synthetic(10)
    write(tmp_path / "a.zarr", rows)  # appended in batches of 3
    w = StoreWriter(str(tmp_path / "b.zarr"), num_examples=10, seq_len=L, k=K, vocab_size=V,
                    attrs={"tokenizer": {"sha256": "x"}}, chunk_rows=4)
    for c in (2, 0, 1):  # chunk by chunk, out of order
        w.write_chunk(c, {k: v[c * 4 : (c + 1) * 4] for k, v in rows.items()})
    w.finalize()

    def files(root):
        return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
                for d, _, names in os.walk(root) for f in names if os.path.join(d, f) != str(root / "zarr.json")}

    a, b = files(tmp_path / "a.zarr"), files(tmp_path / "b.zarr")  # the group's zarr.json holds created_at
    assert set(a) == set(b) and any(name.startswith("id_table/") for name in a)
    assert [name for name in a if a[name] != b[name]] == []
