"""A conversation store read with plain zarr-python (the docs' recipe), against kdstream's reader;
and a text store keeps the layout it had before conversation stores."""
from __future__ import annotations

import numpy as np

from kdstream.storage import open_store
from kdstream.storage.schema import stored_arrays


def test_plain_zarr_recipe_gives_the_readers_positions_and_rows(chat_store):
    import zarr

    g = zarr.open_group(str(chat_store), mode="r")
    a = g.attrs
    assert a["format_version"] == 7 and a["conversations"]["train_on"] == "assistant"
    R, k = a["chunk_rows"], a["k"]
    store = open_store(chat_store)
    for c in range(2):
        rows = slice(c * R, (c + 1) * R)
        n = g["topk_len"][rows].astype(np.int64)  # (B, L-1)
        keep = np.arange(k) < n[..., None]
        index = np.zeros(keep.shape, np.int64)
        index[keep] = g["topk_index"][rows].ravel()[: int(keep.sum())]
        ids = g["id_table"][c].astype(np.int64)[index]
        logp = np.full(keep.shape, -np.inf)
        logp[keep] = g["topk_logprobs"][rows].ravel()[: int(keep.sum())]  # fp32: row by row
        for j in range(R):
            i = c * R + j
            positions = np.flatnonzero(g["topk_len"][i][: g["length"][i] - 1] > 0)
            item = store[i]
            assert np.array_equal(positions, item["positions"])
            assert np.array_equal(g["input_ids"][i][: g["length"][i]], item["input_ids"])
            assert np.array_equal(ids[j][positions], item["topk_ids"])
            np.testing.assert_allclose(logp[j][positions], item["topk_logprobs"])
            assert not n[j][g["length"][i] - 1 :].any()  # nothing stored past the conversation


def test_a_text_store_keeps_its_earlier_layout(teacher_store):
    import zarr

    a = zarr.open_group(str(teacher_store), mode="r").attrs
    assert a["format_version"] == 4 and "conversations" not in a and "chat" not in a["options"]
    assert sorted(zarr.open_group(str(teacher_store), mode="r").array_keys()) == sorted(
        set(stored_arrays(4)) | {"chunk_done", "manifest_crc32c"})
    assert "positions" not in open_store(teacher_store)[0]


def test_stats_count_the_target_positions_only(chat_store):
    from kdstream.storage.stats import store_stats

    store = open_store(chat_store)
    stats = store_stats(str(chat_store))
    assert stats["positions_read"] == sum(len(store[i]["positions"]) for i in range(len(store)))
    assert stats["entries_mean"] == store.k  # a fixed top-k store: k entries at every target
