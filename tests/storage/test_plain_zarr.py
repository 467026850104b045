"""docs/store-format.md is enough to read a store with plain zarr-python (no kdstream reader)."""
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
    rows = slice(0, g.attrs["chunk_rows"])
    topk_ids = g["topk_ids"][rows].astype(np.int64)  # (B, L-1, k)
    topk_lp = g["topk_logprobs"][rows]  # (B, L-1, k)
    tail = 1.0 - np.exp(topk_lp).sum(-1)  # (B, L-1)
    target = g["target_logprob"][rows]
    input_ids = g["input_ids"][rows].astype(np.int64)

    np.testing.assert_array_equal(topk_ids, top[:4])
    np.testing.assert_allclose(tail, 1 - np.exp(np.take_along_axis(logp, top, -1)).sum(-1)[:4], atol=1e-6)
    # row t predicts input_ids[t+1]
    np.testing.assert_allclose(target, np.take_along_axis(logp[:4], input_ids[:, 1:, None], -1)[..., 0], atol=1e-6)
    assert np.all(np.diff(topk_lp, axis=-1) <= 0)
