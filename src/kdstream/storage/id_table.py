"""Top-k ids as indices into a per-chunk table of the chunk's ids, most frequent first.

A chunk of R examples holds R·(L-1)·k top-k ids drawn from a few thousand distinct tokens whose
frequencies are very skewed. Renumbering them by their frequency in the chunk (index 0 = the most
frequent id of the chunk) puts most indices below 256 or 4096, where bit shuffle + zstd code them
close to their entropy; raw ids spread over the whole vocabulary (sizes on SmolLM2, top-64:
docs/benchmarks.md, encoding search). The table
belongs to its chunk, so it is written with it (parallel writers and resume need nothing global)
and a reader needs only the chunks it reads.

    id_table[c]  (V,)  the chunk's distinct ids by descending count (ties: smaller id first), then 0
    topk_ids = id_table[c][topk_index]           for the rows of chunk c
"""
from __future__ import annotations

import numpy as np

# The stored arrays holding token ids (the others hold indices, codes, counts or values)
ID_ARRAYS = ("input_ids", "id_table", "topk_ids", "sample_ids")


def build(ids: np.ndarray, vocab_size: int, dtype: np.dtype,
          pad: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, L-1, k) ids of one chunk → (topk_index (n, L-1, k), table (V,)), both ``dtype``.

    ``pad`` (n, L-1, k) bool: a ragged store's padding slots, left out of the counts (they do not
    move a real id's index) and stored as index 0 (the cheapest to compress; readers mask them).
    ValueError when an id is outside [0, vocab_size)."""
    ids = np.asarray(ids)
    if pad is not None:
        ids = np.where(pad, 0, ids)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"top-k ids must lie in [0, {vocab_size}), got {int(ids.min())}..{int(ids.max())}")
    counted = ids if pad is None else ids[~pad]
    counts = np.bincount(counted.ravel(), minlength=vocab_size)  # (V,)
    order = np.argsort(-counts, kind="stable")  # (V,) most frequent first; stable: ties by id
    used = int(np.count_nonzero(counts))
    index_of = np.empty(vocab_size, dtype=dtype)
    index_of[order] = np.arange(vocab_size, dtype=dtype)  # the inverse permutation
    table = np.zeros(vocab_size, dtype=dtype)
    table[:used] = order[:used]
    index = index_of[ids]
    if pad is not None:
        index[pad] = 0
    return index, table


def lookup(index: np.ndarray, tables: np.ndarray, chunk_of_row: np.ndarray | None = None) -> np.ndarray:
    """Indices (B, L-1, k) + tables (C', V) of the chunks they come from → ids (B, L-1, k) int64.

    ``chunk_of_row`` (B,): which of the C' tables each row uses (None: all rows use table 0, the
    usual whole-chunk read). The gather indexes an int64 table with the stored uint16 indices as
    they are: casting them to intp first allocates a second (B, L-1, k) int64 array, and the page
    faults of fresh memory, not the gather, dominate a chunk read (docs/benchmarks.md, read rates)."""
    tables = np.asarray(tables).astype(np.int64)  # (C', V): small (V ids per chunk read)
    index = np.asarray(index)
    if chunk_of_row is None or len(tables) == 1:
        return tables[0][index]  # (B, L-1, k) int64
    return tables[np.asarray(chunk_of_row, dtype=np.intp)[:, None, None], index]


def outside(values: np.ndarray, vocab_size: int) -> int | None:
    """A value of ``values`` (ids, or indices into a table of ``vocab_size`` entries) outside
    [0, vocab_size), or None when all lie in it. One pass (min / max), skipped where the dtype
    cannot hold such a value (uint16 ids of a 65,536-token vocabulary)."""
    values = np.asarray(values)
    if not values.size:
        return None
    info = np.iinfo(values.dtype)
    if info.min >= 0 and info.max < vocab_size:
        return None
    hi = int(values.max())
    if hi >= vocab_size:
        return hi
    lo = int(values.min()) if info.min < 0 else 0
    return lo if lo < 0 else None
