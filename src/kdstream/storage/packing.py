"""Ragged rows packed per chunk (format version 6): each chunk's kept entries stored back to back.

A ragged row keeps a prefix of its top-k list (``topk_len`` entries, selection.py). Format version
5 stored the rows padded to k, zeros at the unused slots; the compressor then saw runs of padding
of every length between real entries, and a ragged store cost 22-30% more bytes per entry than a
fixed one (docs/benchmarks.md, ragged stores). Version 6 keeps the arrays' shapes, (S, L-1, k) in
chunks of R rows, but fills each chunk of ``topk_index`` and ``topk_logprobs`` with the chunk's
kept entries first (CSR without offsets: ``topk_len`` gives them), then zeros to the chunk's end:

    topk_index      row-major:  row 0's entries, row 1's, …  (as a fixed store's rows, minus the padding)
    topk_logprobs   qdelta: slot-major, every row's slot-0 code, then slot 1 of the rows that have one, …
                    (a fixed store's transpose codec order); fp32: row-major

so the chunk bytes of a store whose rows are all full are those of the fixed store. Unpacking
needs the whole chunk and its lengths: ``keep = arange(k) < topk_len[..., None]`` and
``out[keep] = chunk.ravel()[:keep.sum()]`` (slot-major: through ``keep.transpose(2, 0, 1)``).
"""
from __future__ import annotations

import numpy as np

PACKED = ("topk_index", "topk_logprobs")  # the (S, L-1, k) arrays a version 6 ragged store packs


def slot_major(name: str, logprobs: str) -> bool:
    """Whether array ``name`` is packed slot by slot (qdelta codes) rather than row by row."""
    return name == "topk_logprobs" and logprobs == "qdelta"


def keep_mask(lengths: np.ndarray, k: int) -> np.ndarray:
    """(...,) lengths → (..., k) bool, True at the slots in use (j < length)."""
    return np.arange(k) < np.asarray(lengths, dtype=np.int64)[..., None]


def pack(values: np.ndarray, lengths: np.ndarray, by_slot: bool) -> np.ndarray:
    """One chunk's padded (n, L-1, k) values → (n, L-1, k): the entries of each row's first
    ``lengths`` (n, L-1) slots in order (row-major, or slot-major with ``by_slot``), then zeros."""
    keep = keep_mask(lengths, values.shape[-1])  # (n, L-1, k)
    if by_slot:
        kept = values.transpose(2, 0, 1)[keep.transpose(2, 0, 1)]  # (m,) slot 0 of every row, then slot 1, …
    else:
        kept = values[keep]  # (m,) row by row
    out = np.zeros(values.size, dtype=values.dtype)
    out[: kept.size] = kept
    return out.reshape(values.shape)


def unpack(packed: np.ndarray, lengths: np.ndarray, by_slot: bool, fill=0) -> np.ndarray:
    """``pack``'s (n, L-1, k) chunk + its (n, L-1) lengths → the padded (n, L-1, k) rows, ``fill``
    at the unused slots; C-contiguous."""
    n, rows, k = packed.shape
    flat = packed.reshape(-1)
    if by_slot:  # scatter slot-major (contiguous), then one transposing copy, as zarr's transpose codec does
        keep_t = np.arange(k)[:, None, None] < np.asarray(lengths, dtype=np.int64)[None]  # (k, n, L-1) contiguous:
        out_t = np.full((k, n, rows), fill, dtype=packed.dtype)  # a contiguous mask scatters twice as fast
        out_t[keep_t] = flat[: int(np.count_nonzero(keep_t))]
        return np.ascontiguousarray(out_t.transpose(1, 2, 0))
    keep = keep_mask(lengths, k)  # (n, L-1, k)
    out = np.full(packed.shape, fill, dtype=packed.dtype)
    out[keep] = flat[: int(np.count_nonzero(keep))]
    return out


def unpack_ids(packed: np.ndarray, lengths: np.ndarray, tables: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Whole chunks of packed ``topk_index`` (B, L-1, k) + lengths (B, L-1) + the chunks' id tables
    (C', V) → (B, L-1, k) int64 ids, 0 at the unused slots. Looks up only the entries in use and
    scatters the ids (cheaper than unpacking the indices, looking up every slot, then masking)."""
    out = np.zeros(packed.shape, dtype=np.int64)
    k = packed.shape[-1]
    for c, a in enumerate(range(0, len(packed), chunk_rows)):
        keep = keep_mask(lengths[a : a + chunk_rows], k)  # (R, L-1, k)
        kept = packed[a : a + chunk_rows].reshape(-1)[: int(np.count_nonzero(keep))].astype(np.intp)
        out[a : a + chunk_rows][keep] = np.take(np.asarray(tables[c]).astype(np.int64), kept)
    return out


def unpack_chunks(packed: np.ndarray, lengths: np.ndarray, chunk_rows: int, by_slot: bool, fill=0) -> np.ndarray:
    """Whole chunks (B, L-1, k) read from the start of a chunk (B = a multiple of ``chunk_rows``,
    or shorter at the store's end) → their padded rows, chunk by chunk."""
    if len(packed) <= chunk_rows:
        return unpack(packed, lengths, by_slot, fill)
    out = np.empty(packed.shape, dtype=packed.dtype)
    for a in range(0, len(packed), chunk_rows):
        out[a : a + chunk_rows] = unpack(packed[a : a + chunk_rows], lengths[a : a + chunk_rows], by_slot, fill)
    return out
