"""kdstream.torch.StoreDataset / collate / check_compatible on a real store (session fixture)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from kdstream.errors import KdError
from kdstream.storage import open_store
from kdstream.torch import StoreDataset, check_compatible, collate


def test_items_equal_the_store_rows_for_every_key(teacher_store):
    store = open_store(teacher_store)
    keys = ("input_ids", "topk_ids", "topk_logprobs", "tail_mass", "target_logprob", "example_id")
    ds = StoreDataset(teacher_store, keys)
    assert len(ds) == len(store) and ds.identity == store.identity
    for i in (0, 5, len(ds) - 1):
        want = store[i]
        got = ds[i]
        assert set(got) == set(keys)
        for k in keys:
            assert isinstance(got[k], torch.Tensor)
            np.testing.assert_array_equal(got[k].numpy(), want[k])
    many = ds.__getitems__([3, 0, 3, len(ds) - 1])  # what DataLoader calls with a batch of indices
    assert [int(e["example_id"]) for e in many] == [int(store[i]["example_id"]) for i in (3, 0, 3, len(ds) - 1)]


def test_rows_and_exclude_select_examples(teacher_store, tmp_path):
    store = open_store(teacher_store)
    ids = store.read(0, len(store), ("example_id",))["example_id"]
    ds = StoreDataset(teacher_store, rows=[4, 2, 7])
    assert [int(ds[i]["example_id"]) for i in range(3)] == [int(ids[4]), int(ids[2]), int(ids[7])]
    (tmp_path / "ex.txt").write_text(f"{ids[0]}\n{ids[1]}\n")
    for exclude in ([int(ids[0]), int(ids[1])], tmp_path / "ex.txt"):
        kept = StoreDataset(teacher_store, exclude=exclude)
        assert len(kept) == len(store) - 2
        assert {int(kept[i]["example_id"]) for i in range(len(kept))} == set(ids.tolist()) - {int(ids[0]), int(ids[1])}


def test_a_dataloader_with_workers_reads_every_example_once(teacher_store):
    ds = StoreDataset(teacher_store)
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives: no open handle
    assert clone._handle is None and int(clone[1]["example_id"]) == int(ds[1]["example_id"])
    order = ds.block_order(seed=3)
    assert sorted(order) == list(range(len(ds))) and order != list(range(len(ds)))
    loader = torch.utils.data.DataLoader(ds, batch_size=5, sampler=order, collate_fn=collate, num_workers=2)
    seen = []
    for batch in loader:
        assert batch["input_ids"].shape[1:] == (ds.seq_len,)
        assert batch["topk_ids"].shape[1:] == (ds.seq_len - 1, ds.k) and batch["topk_ids"].dtype == torch.int64
        seen += batch["example_id"].tolist()
    assert sorted(seen) == sorted(int(ds[i]["example_id"]) for i in range(len(ds)))


def test_collate_pads_ragged_rows_as_unlisted_entries():
    a = {"input_ids": torch.arange(4), "topk_ids": torch.ones(3, 2, dtype=torch.int64),
         "topk_logprobs": torch.full((3, 2), -0.5)}
    b = {"input_ids": torch.arange(4), "topk_ids": torch.ones(3, 4, dtype=torch.int64),
         "topk_logprobs": torch.full((3, 4), -1.5)}
    out = collate([a, b])
    assert out["topk_ids"].shape == (2, 3, 4) and out["topk_logprobs"].shape == (2, 3, 4)
    assert torch.isneginf(out["topk_logprobs"][0, :, 2:]).all() and (out["topk_ids"][0, :, 2:] == 0).all()
    assert (out["topk_logprobs"][1] == -1.5).all()
    with pytest.raises(ValueError, match="different lengths"):
        collate([a, {**b, "input_ids": torch.arange(5)}])


def test_bad_arguments_are_one_line_errors(teacher_store, tmp_path):
    with pytest.raises(KdError, match="not store arrays"):
        StoreDataset(teacher_store, keys=("input_ids", "logits"))
    with pytest.raises(KdError, match="no logit store"):
        StoreDataset(tmp_path / "absent.zarr")
    with pytest.raises(KdError, match="row indices"):
        StoreDataset(teacher_store, rows=[10_000])


def test_check_compatible_refuses_another_tokenizer_and_a_small_head(teacher_store, tokenizer, docs, tmp_path):
    from benchmarks.fixtures import tiny_gpt_neox
    from kdstream.text.tokenizers import train_bpe_tokenizer

    ds = StoreDataset(teacher_store)
    check_compatible(ds, tokenizer)  # the teacher's own tokenizer passes
    check_compatible(str(teacher_store), tokenizer)
    other = train_bpe_tokenizer(docs[:30], 300, tmp_path / "other")
    with pytest.raises(KdError, match="tokenizer .* differs from the store's"):
        check_compatible(ds, other)
    small = tiny_gpt_neox(100, seed=None, hidden=64, layers=1, heads=1, intermediate=64)
    with pytest.raises(KdError, match="output layer has 100 classes"):
        check_compatible(ds, tokenizer, small)
