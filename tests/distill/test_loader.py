import numpy as np

from kdstream.data.examples import Examples
from kdstream.distill.loader import iterate_batches


def _examples(n, L=4):
    ids = np.arange(n * L).reshape(n, L)
    return Examples(ids, np.arange(n) * 10, np.zeros(n, np.int64))


def test_every_example_once_per_epoch_in_a_seeded_order():
    src = _examples(103)
    seen = [b["example_id"] for b in iterate_batches(src, ("input_ids",), 8, seed=3, epoch=0, block_rows=16)]
    flat = np.concatenate(seen)
    assert sorted(flat.tolist()) == list(range(0, 1030, 10))
    assert [len(s) for s in seen][:-1] == [8] * (len(seen) - 1)
    again = np.concatenate([b["example_id"] for b in iterate_batches(src, ("input_ids",), 8, 3, 0, 16)])
    np.testing.assert_array_equal(flat, again)
    other = np.concatenate([b["example_id"] for b in iterate_batches(src, ("input_ids",), 8, 3, 1, 16)])
    assert not np.array_equal(flat, other)  # a new order each epoch


def test_excluded_examples_are_never_seen_and_rows_stay_whole():
    src = _examples(50)
    excluded = frozenset({0, 70, 490})
    batches = list(iterate_batches(src, ("input_ids",), 7, 0, 0, 16, exclude=excluded))
    ids = np.concatenate([b["example_id"] for b in batches])
    assert len(ids) == 47 and not set(ids.tolist()) & excluded
    for b in batches:  # input_ids travel with their example id
        np.testing.assert_array_equal(b["input_ids"][:, 0], (b["example_id"] // 10) * 4)


def test_skip_batches_resumes_the_same_sequence():
    src = _examples(77)
    excluded = frozenset({30, 40, 500})
    full = list(iterate_batches(src, ("input_ids",), 6, 5, 2, 16, exclude=excluded))
    for skip in (0, 1, 3, 5, len(full)):
        rest = list(iterate_batches(src, ("input_ids",), 6, 5, 2, 16, exclude=excluded, skip_batches=skip))
        assert len(rest) == len(full) - skip
        for a, b in zip(full[skip:], rest):
            np.testing.assert_array_equal(a["example_id"], b["example_id"])
