"""Stream examples from a logit store (or in-memory examples) in a seeded, reproducible order.

The order depends only on (number of examples, block size, seed, epoch), never on the source,
so a CE baseline trained from a dataset and a student trained from the store of the same
examples see them in the same order. Blocks of contiguous rows are read with one slice each
(whole chunks, no per-row reads); blocks are shuffled, then rows within each block.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np


class ExampleSource(Protocol):
    def __len__(self) -> int: ...

    def read(self, start: int, stop: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]: ...


def epoch_blocks(num_examples: int, block_rows: int, seed: int, epoch: int) -> list[tuple[int, int, np.ndarray]]:
    """[(start, stop, row permutation within the block)] in the order they are visited."""
    rng = np.random.default_rng([seed, epoch])
    starts = np.arange(0, num_examples, block_rows)
    blocks = []
    for s in starts[rng.permutation(len(starts))]:
        e = min(int(s) + block_rows, num_examples)
        blocks.append((int(s), e, rng.permutation(e - int(s))))
    return blocks


def iterate_batches(
    source: ExampleSource,
    keys: tuple[str, ...],
    batch_size: int,
    seed: int,
    epoch: int,
    block_rows: int = 64,
    exclude: frozenset[int] = frozenset(),
    skip_batches: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches (dicts of arrays with a leading batch axis) covering every kept example once.

    ``exclude`` holds example ids to skip. The last batch of an epoch may be smaller.
    ``skip_batches`` resumes mid-epoch: the first batches are not yielded, and blocks that lie
    wholly inside them are not read beyond their example ids.
    """
    need = tuple(dict.fromkeys((*keys, "example_id")))
    pending: list[dict[str, np.ndarray]] = []
    count = 0
    to_skip = skip_batches * batch_size  # kept rows to drop before the first yielded batch
    for start, stop, perm in epoch_blocks(len(source), block_rows, seed, epoch):
        if to_skip:
            ids = source.read(start, stop, ("example_id",))["example_id"]
            kept = int((~np.isin(ids, list(exclude))).sum()) if exclude else stop - start
            if kept <= to_skip:
                to_skip -= kept
                continue
        rows = source.read(start, stop, need)
        order = perm
        if exclude:
            order = perm[~np.isin(rows["example_id"][perm], list(exclude))]
        order, to_skip = order[to_skip:], 0
        if len(order) == 0:
            continue
        pending.append({k: v[order] for k, v in rows.items()})
        count += len(order)
        while count >= batch_size:
            merged = {k: np.concatenate([p[k] for p in pending]) for k in need}
            yield {k: v[:batch_size] for k, v in merged.items()}
            pending = [{k: v[batch_size:] for k, v in merged.items()}]
            count -= batch_size
    if count:
        yield {k: np.concatenate([p[k] for p in pending]) for k in need}


def batches_per_epoch(num_kept: int, batch_size: int) -> int:
    return -(-num_kept // batch_size)
