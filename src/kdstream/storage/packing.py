"""Ragged rows packed per chunk (format version 6): each chunk's kept entries stored back to back.

A ragged row keeps a prefix of its top-k list (``topk_len`` entries, selection.py). Format version
5 stored the rows padded to k, zeros at the unused slots; the compressor then saw runs of padding
of every length between real entries, and a ragged store cost more bytes per entry than a
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
    """(...,) lengths → (..., k) bool, True at the slots in use (j < length). Compared in the
    lengths' own dtype (a store's uint8 ``topk_len``): a cast to int64 first costs more than the compare."""
    lengths = np.asarray(lengths)
    return np.arange(k, dtype=_small(lengths, k)) < lengths[..., None]


def _small(lengths: np.ndarray, k: int) -> np.dtype:
    """The lengths' dtype when it holds k, else int64."""
    return lengths.dtype if lengths.dtype.kind in "ui" and np.iinfo(lengths.dtype).max >= k else np.dtype(np.int64)


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


def _scatter(out: np.ndarray, keep: np.ndarray, values: np.ndarray) -> None:
    """``out[keep] = values[:keep.sum()]``, through the flat indices of the kept slots: a boolean
    mask assignment of k = 64 slots per row is slower."""
    where = np.flatnonzero(keep)
    out.reshape(-1)[where] = values[: len(where)]


def running_sum_by_slot(by_slot: np.ndarray) -> None:
    """(k, ...) uint16 delta codes, slot-major → their running sums over the slots (absolute codes),
    in place: k whole-array adds, where numpy's cumsum along a row-major last axis of k = 64 runs
    one row at a time. Never wraps: the encoder's codes are non-decreasing and
    at most 65535 (encoding.cumulative_codes)."""
    for j in range(1, len(by_slot)):
        np.add(by_slot[j], by_slot[j - 1], out=by_slot[j])


def unpack(packed: np.ndarray, lengths: np.ndarray, by_slot: bool, fill=0, cumulative: bool = False) -> np.ndarray:
    """``pack``'s (n, L-1, k) chunk + its (n, L-1) lengths → the padded (n, L-1, k) rows, ``fill``
    at the unused slots; C-contiguous. ``cumulative`` (slot-major delta codes, fill 0): the rows'
    absolute codes instead (``encoding.cumulative_codes`` of the result), summed while the chunk is
    still slot-major; a padding slot repeats its row's last code."""
    n, rows, k = packed.shape
    flat = packed.reshape(-1)
    if by_slot:  # scatter slot-major (contiguous), then one transposing copy, as zarr's transpose codec does
        lengths = np.asarray(lengths)
        keep_t = np.arange(k, dtype=_small(lengths, k))[:, None, None] < lengths[None]  # (k, n, L-1) contiguous:
        out_t = np.full((k, n, rows), fill, dtype=packed.dtype)  # a contiguous mask scatters twice as fast
        _scatter(out_t, keep_t, flat)
        if cumulative:
            running_sum_by_slot(out_t)
        return np.ascontiguousarray(out_t.transpose(1, 2, 0))
    keep = keep_mask(lengths, k)  # (n, L-1, k)
    out = np.full(packed.shape, fill, dtype=packed.dtype)
    _scatter(out, keep, flat)
    return out


def unpack_ids(packed: np.ndarray, lengths: np.ndarray, tables: np.ndarray, chunk_rows: int,
               lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Whole chunks of packed ``topk_index`` (B, L-1, k) + lengths (B, L-1) + the chunks' id tables
    (C', V) → rows [lo, hi) of them as (hi - lo, L-1, k) int64 ids, 0 at the unused slots. Looks
    up only the entries in use and scatters the ids (cheaper than unpacking the indices, looking
    up every slot, then masking); rows outside [lo, hi) cost nothing but a sum of their lengths."""
    hi = len(packed) if hi is None else hi
    k = packed.shape[-1]
    out = np.zeros((hi - lo, *packed.shape[1:]), dtype=np.int64)
    for c, (a, s, e) in enumerate(_segments(len(packed), chunk_rows, lo, hi)):
        lens = np.asarray(lengths[a : a + chunk_rows], dtype=np.int64)
        if s == e:
            continue
        keep = keep_mask(lengths[a + s : a + e], k)  # (e - s, L-1, k)
        off = int(lens[:s].sum())  # row-major: the entries of the chunk's rows before s come first
        kept = packed[a : a + chunk_rows].reshape(-1)[off : off + int(np.count_nonzero(keep))]  # (m,) indices
        # the stored indices index the int64 table as they are (no intp copy: id_table.lookup)
        out[a + s - lo : a + e - lo][keep] = np.asarray(tables[c]).astype(np.int64)[kept]
    return out


def _segments(total: int, chunk_rows: int, lo: int, hi: int):
    """For each chunk of ``total`` rows read from a chunk start: (its first row, then the start and
    end of [lo, hi) within it, both clipped to the chunk; s == e where the chunk holds none)."""
    for a in range(0, total, chunk_rows):
        n = min(chunk_rows, total - a)
        yield a, min(max(lo - a, 0), n), min(max(hi - a, 0), n)


def unpack_rows(packed: np.ndarray, lengths: np.ndarray, s: int, e: int, by_slot: bool, fill=0,
                cumulative: bool = False) -> np.ndarray:
    """Rows [s, e) of one chunk: ``pack``'s (n, L-1, k) chunk + its (n, L-1) lengths → (e - s, L-1, k)
    padded, ``fill`` at the unused slots, without unpacking the chunk's other rows (a loader's
    batch of a few rows from a chunk of a thousand). ``cumulative``: as ``unpack``'s."""
    n, rows, k = packed.shape
    if (s, e) == (0, n):
        return unpack(packed, lengths, by_slot, fill, cumulative)
    lens = np.asarray(lengths, dtype=np.int64)
    sub = lens[s:e]  # (b, L-1)
    flat = packed.reshape(-1)
    if not by_slot:
        keep = keep_mask(sub, k)
        out = np.full((e - s, rows, k), fill, dtype=packed.dtype)
        _scatter(out, keep, flat[int(lens[:s].sum()):])
        return out
    # slot-major: slot j holds, in row-major order, the entries of every (row, position) with
    # length > j; so entry j of (r, p) sits at (entries of slots < j) + (earlier rows' slot-j
    # entries) + (its rank among the rows read)
    def beyond(x: np.ndarray) -> np.ndarray:  # (k,) how many of x's lengths exceed j, for each j
        return x.size - np.cumsum(np.bincount(x.reshape(-1), minlength=k + 1))[:k]

    per_slot = beyond(lens)
    first = np.concatenate([[0], np.cumsum(per_slot)[:-1]]) + beyond(lens[:s])  # (k,)
    keep_t = (np.arange(k)[:, None] < sub.reshape(1, -1))  # (k, b*(L-1))
    where = first[:, None] + np.cumsum(keep_t, axis=1) - 1  # (k, b*(L-1)) flat index of each kept entry
    out_t = np.full(keep_t.shape, fill, dtype=packed.dtype)
    out_t[keep_t] = flat[where[keep_t]]
    if cumulative:
        running_sum_by_slot(out_t)
    return np.ascontiguousarray(out_t.reshape(k, e - s, rows).transpose(1, 2, 0))


def unpack_chunks(packed: np.ndarray, lengths: np.ndarray, chunk_rows: int, by_slot: bool, fill=0,
                  lo: int = 0, hi: int | None = None, cumulative: bool = False) -> np.ndarray:
    """Whole chunks (B, L-1, k) read from the start of a chunk (B = a multiple of ``chunk_rows``,
    or shorter at the store's end) → rows [lo, hi) of them padded, chunk by chunk. ``cumulative``:
    as ``unpack``'s."""
    hi = len(packed) if hi is None else hi
    if (lo, hi) == (0, len(packed)) and len(packed) <= chunk_rows:
        return unpack(packed, lengths, by_slot, fill, cumulative)
    out = np.empty((hi - lo, *packed.shape[1:]), dtype=packed.dtype)
    for a, s, e in _segments(len(packed), chunk_rows, lo, hi):
        if s < e:
            out[a + s - lo : a + e - lo] = unpack_rows(packed[a : a + chunk_rows], lengths[a : a + chunk_rows], s, e,
                                                       by_slot, fill, cumulative)
    return out
