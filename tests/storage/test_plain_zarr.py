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
    true_rank = 1 + (logp > np.take_along_axis(logp, ids[:, 1:, None], -1)).sum(-1)  # (S, L-1), some > K
    w = StoreWriter(str(tmp_path / "t.zarr"), num_examples=S, seq_len=L, k=K, vocab_size=V, attrs={}, chunk_rows=4)
    w.append({"input_ids": ids, "example_id": np.arange(S), "doc_index": np.zeros(S, int), "topk_ids": top,
              "topk_logprobs": np.take_along_axis(logp, top, -1),
              "target_logprob": np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0],
              "target_rank": true_rank})
    w.finalize()

    # --- what another team writes from docs/store-format.md ---
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    a = g.attrs
    assert a["format"] == "kdstream-logits" and a["complete"] is True and a["format_version"] == 4
    e = a["encoding"]
    assert e["topk_logprobs"] == "qdelta" and e["topk_ids"] == "id_table"
    R, k = a["chunk_rows"], a["k"]
    got = {}
    for c in range(-(-a["num_examples"] // R)):                       # read whole chunks, not row by row
        rows = slice(c * R, (c + 1) * R)
        topk_ids = g["id_table"][c].astype(np.int64)[g["topk_index"][rows]]             # (B, L-1, k)
        codes = np.cumsum(g["topk_logprobs"][rows], -1, dtype=np.int64)                 # (B, L-1, k)
        lp = -codes * e["scale"] + g["topk_shift"][rows][..., None] * e["shift_scale"]  # (B, L-1, k)
        tail = 1 - np.exp(lp).sum(-1)                                                   # (B, L-1)
        rank = g["target_rank"][rows].astype(np.int64)                                  # (B, L-1)
        ref = np.take_along_axis(codes, np.clip(rank - 1, 0, k - 1)[..., None], -1)[..., 0]
        target = -(g["target_code"][rows] + 512 * ref) * e["target_scale"]             # (B, L-1)
        for key, v in (("topk_ids", topk_ids), ("lp", lp), ("tail", tail), ("target", target),
                       ("input_ids", g["input_ids"][rows].astype(np.int64))):
            got.setdefault(key, []).append(v)
    got = {key: np.concatenate(v) for key, v in got.items()}

    true_top = np.take_along_axis(logp, top, -1)
    np.testing.assert_array_equal(got["topk_ids"], top)
    assert np.abs(got["lp"] - true_top).max() <= e["max_abs_error"] + 1e-6
    np.testing.assert_allclose(got["tail"], 1 - np.exp(true_top).sum(-1), atol=1e-5)
    # row t predicts input_ids[t+1]; targets inside and outside the top-k decode alike
    assert (true_rank <= K).any() and (true_rank > K).any()
    true_target = np.take_along_axis(logp, got["input_ids"][:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(got["target"], true_target, atol=e["target_max_abs_error"])
    assert np.all(np.diff(got["lp"], axis=-1) <= 0)
