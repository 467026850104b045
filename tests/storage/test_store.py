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
    for key, value in rows.items():
        np.testing.assert_allclose(part[key], value[2:9], rtol=0, atol=0)
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
