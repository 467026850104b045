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


def _same_as_a_padded_read(store, start: int, stop: int) -> int:
    """read_targets(start, stop) against read(start, stop) at the rows holding entries."""
    keys = ("topk_ids", "topk_logprobs", "tail_mass", "target_logprob", "target_rank")
    full = store.read(start, stop, keys + ("topk_len",))
    got = store.read_targets(start, stop, keys)
    ex, pos = np.nonzero(full["topk_len"])
    assert np.array_equal(got["example"], ex + start) and np.array_equal(got["position"], pos)
    assert np.array_equal(got["topk_len"], full["topk_len"][ex, pos])
    for key in keys:
        assert got[key].dtype == full[key].dtype
        assert np.array_equal(got[key], full[key][ex, pos]), key
    return len(ex)


def test_read_targets_gives_the_target_rows_of_a_padded_read(chat_store, chat_teacher_dir, chat_file, teacher_store,
                                                             tmp_path):
    from chat_templates import chat_precompute_args
    from helpers import run_cli
    from kdstream.storage.union import open_stores

    qdelta = tmp_path / "qdelta.zarr"  # the default encoding, read through summed slot-major codes
    run_cli(*chat_precompute_args(chat_teacher_dir, chat_file, qdelta, "--backend", "hf", "--chunk-rows", 5))
    fp32 = tmp_path / "fp32.zarr"  # chat_store's encoding, other chunks: a union's second part
    run_cli(*chat_precompute_args(chat_teacher_dir, chat_file, fp32, "--backend", "hf", "--chunk-rows", 7,
                                  "--logprob-encoding", "fp32"))
    for path in (chat_store, qdelta, teacher_store):
        store = open_store(path)
        n, R = len(store), store.chunk_rows
        spans = [(0, n), (1, min(n, R + 2)), (n - 1, n), (2, 2)]  # whole, across a chunk bound, the last, empty
        assert _same_as_a_padded_read(store, 0, n) > 0
        for a, b in spans:
            _same_as_a_padded_read(store, a, b)
    union = open_stores(f"{chat_store},{fp32}")
    first = len(open_store(chat_store)) - 2
    got = union.read_targets(first, len(union))
    assert got["example"][0] == first and got["example"][-1] == len(union) - 1
    assert np.array_equal(got["position"], np.concatenate([union[i]["positions"] for i in range(first, len(union))]))
    assert np.array_equal(got["topk_ids"], np.concatenate([union[i]["topk_ids"] for i in range(first, len(union))]))
