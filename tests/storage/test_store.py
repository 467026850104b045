import json

import numpy as np
import pytest
import zarr

from kdstream.errors import KdError
from kdstream.storage import StoreWriter, open_store

L, K, V = 16, 4, 300


def synthetic(n, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, L - 1, V)).astype(np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    top = np.argsort(-logp, axis=-1)[..., :K]
    ids = rng.integers(0, V, size=(n, L))
    return {
        "input_ids": ids,
        "example_id": np.arange(n) + 100,
        "doc_index": np.arange(n) // 3,
        "topk_ids": top,
        "topk_logprobs": np.take_along_axis(logp, top, -1),
        "target_logprob": np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0],
        "target_rank": rng.integers(1, V, size=(n, L - 1)),
    }


def write(path, rows, chunk_rows=4, finalize=True, **kw):
    n = len(rows["input_ids"])
    w = StoreWriter(str(path), num_examples=n, seq_len=L, k=K, vocab_size=V, attrs={"tokenizer": {"sha256": "x"}},
                    chunk_rows=chunk_rows, **kw)
    for b in range(0, n, 3):  # batches that do not line up with chunks
        w.append({k: v[b : b + 3] for k, v in rows.items()})
    if finalize:
        w.finalize()
    return w


def test_roundtrip_random_access_and_slices(tmp_path):
    rows = synthetic(10)
    write(tmp_path / "s.zarr", rows)
    store = open_store(str(tmp_path / "s.zarr"))
    assert len(store) == 10 and store.attrs["complete"] is True and store.attrs["k"] == K
    one = store[7]
    assert one["input_ids"].shape == (L,) and one["topk_ids"].shape == (L - 1, K)
    np.testing.assert_array_equal(one["topk_ids"], rows["topk_ids"][7])
    part = store[2:9]
    bound = store.attrs["encoding"]["max_abs_error"]  # qdelta: 1/128 nats
    for key, value in rows.items():
        atol = bound + 1e-6 if key == "topk_logprobs" else 0  # all exact but the top-k logprobs
        np.testing.assert_allclose(part[key], value[2:9], rtol=0, atol=atol, err_msg=key)
    # the decoded top-k + stored tail is a distribution: mass exactly 1 - tail
    np.testing.assert_allclose(np.exp(part["topk_logprobs"].astype(np.float64)).sum(-1) + part["tail_mass"], 1.0,
                               atol=1e-5)
    assert part["topk_logprobs"].dtype == np.float32 and part["topk_ids"].dtype == np.int64
    # ids are stored in the smallest width the vocabulary allows
    assert str(zarr.open_group(str(tmp_path / "s.zarr"))["topk_ids"].dtype) == "uint16"


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
