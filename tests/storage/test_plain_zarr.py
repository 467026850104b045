"""docs/store-format.md is enough to read a store with plain zarr-python and numpy (no kdstream reader)."""
import numpy as np
import zarr

from kdstream.storage import StoreWriter


def test_read_a_store_following_the_spec_only(tmp_path):
    S, L, K, V = 6, 9, 3, 40
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(S, L - 1, V))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    top = np.argsort(-logp, -1)[..., :K]
    ids = rng.integers(0, V, size=(S, L))
    w = StoreWriter(str(tmp_path / "t.zarr"), num_examples=S, seq_len=L, k=K, vocab_size=V, attrs={}, chunk_rows=4)
    w.append({"input_ids": ids, "example_id": np.arange(S), "doc_index": np.zeros(S, int), "topk_ids": top,
              "topk_logprobs": np.take_along_axis(logp, top, -1),
              "target_logprob": np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0],
              "target_rank": np.ones((S, L - 1), int)})
    w.finalize()

    # --- what another team writes from docs/store-format.md ---
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    assert g.attrs["format"] == "kdstream-logits" and g.attrs["complete"] is True
    assert g.attrs["format_version"] == 2
    e = g.attrs["encoding"]
    assert e["topk_logprobs"] == "qdelta"
    rows = slice(0, g.attrs["chunk_rows"])
    topk_ids = g["topk_ids"][rows].astype(np.int64)  # (B, L-1, k)
    tail = g["tail_mass"][rows].astype(np.float64)  # (B, L-1)
    lp = -np.cumsum(g["topk_logprobs"][rows].astype(np.int64), -1) * e["scale"]  # (B, L-1, k)
    lp += (np.log1p(-tail) - np.log(np.exp(lp).sum(-1)))[..., None]  # top-k mass = 1 - tail
    target = g["target_logprob"][rows]  # (B, L-1) float32, exact
    input_ids = g["input_ids"][rows].astype(np.int64)

    true_top = np.take_along_axis(logp, top, -1)[:4]
    np.testing.assert_array_equal(topk_ids, top[:4])
    assert np.abs(lp - true_top).max() <= e["max_abs_error"] + 1e-6
    np.testing.assert_allclose(tail, 1 - np.exp(true_top).sum(-1), atol=1e-6)
    # row t predicts input_ids[t+1]
    true_target = np.take_along_axis(logp[:4], input_ids[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(target, true_target, atol=1e-6)
    assert np.all(np.diff(lp, axis=-1) <= 0)
