"""The loader's plan and reads: seeded exact order, exclusion, mid-epoch resume, and the split
across ranks and DataLoader worker processes (every example exactly once)."""
import numpy as np
import pytest

from kdstream.data.examples import Examples
from kdstream.distill.loader import BlockReader, EpochPlan, Given, epoch_order, stream_batches


def _examples(n, L=4):
    ids = np.arange(n * L).reshape(n, L)
    return Examples(ids, np.arange(n) * 10, np.zeros(n, np.int64))


def _ids(src, plan, **kw):
    return [b["example_id"].numpy() for b, _ in stream_batches(Given(src), plan, **kw)]


def test_every_example_once_per_epoch_in_a_seeded_order():
    src = _examples(103)
    seen = _ids(src, EpochPlan(epoch_order(103, 16, 3, 0), 8, 16, ("input_ids",)))
    flat = np.concatenate(seen)
    assert sorted(flat.tolist()) == list(range(0, 1030, 10))
    assert [len(s) for s in seen][:-1] == [8] * (len(seen) - 1)
    np.testing.assert_array_equal(flat, np.concatenate(_ids(src, EpochPlan(epoch_order(103, 16, 3, 0), 8, 16, ("input_ids",)))))
    assert not np.array_equal(flat, epoch_order(103, 16, 3, 1) * 10)  # a new order each epoch


def test_excluded_examples_are_never_seen_and_rows_stay_whole():
    src = _examples(50)
    kept = ~np.isin(src.example_id, [0, 70, 490])
    batches = [b for b, _ in stream_batches(Given(src), EpochPlan(epoch_order(50, 16, 0, 0, kept), 7, 16, ("input_ids",)))]
    ids = np.concatenate([b["example_id"] for b in batches])
    assert len(ids) == 47 and not set(ids.tolist()) & {0, 70, 490}
    for b in batches:  # input_ids travel with their example id
        np.testing.assert_array_equal(b["input_ids"][:, 0], (b["example_id"] // 10) * 4)


def test_resume_mid_epoch_continues_the_same_sequence():
    src = _examples(77)
    order = epoch_order(77, 16, 5, 2, ~np.isin(src.example_id, [30, 40, 500]))
    full = _ids(src, EpochPlan(order, 6, 16, ("input_ids",)))
    for skip in (0, 1, 3, 5, len(full)):
        rest = _ids(src, EpochPlan(order, 6, 16, ("input_ids",), start_batch=skip), prefetch=0)
        assert len(rest) == len(full) - skip
        for a, b in zip(full[skip:], rest):
            np.testing.assert_array_equal(a, b)


def test_one_process_reads_each_block_once():
    src = _examples(100)
    reader = BlockReader(src, 16, ("input_ids",))
    order = epoch_order(100, 16, 1, 0)
    for g in range(0, 100, 8):
        reader.take(order[g : g + 8])
    assert reader.blocks_read == 7  # ceil(100 / 16): never a block twice


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_times_workers_see_every_example_exactly_once(workers):
    """2 ranks x `workers` DataLoader processes: each global batch is split across the ranks
    (same order as one process), nothing dropped or repeated, excluded examples never."""
    src = _examples(61)
    kept = ~np.isin(src.example_id, [50, 330])
    order = epoch_order(61, 8, 7, 1, kept)
    one = _ids(src, EpochPlan(order, 10, 8, ("input_ids",)))
    ranks = [_ids(src, EpochPlan(order, 10, 8, ("input_ids",), rank=r, world=2), workers=workers) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)
    for g, whole in enumerate(one):  # rank 0 then rank 1 = the single process's batch
        np.testing.assert_array_equal(np.concatenate([ranks[0][g], ranks[1][g]]), whole)
    every = np.concatenate([np.concatenate(r) for r in ranks])
    assert sorted(every.tolist()) == sorted(src.example_id[kept].tolist())
