"""A packed store's target rows only: the rows a loss reads, without unpacking the others.

A conversation store keeps top-k entries at its assistant positions and none elsewhere
(``topk_len`` 0), so a padded read of its (S, L-1, k) arrays decodes mostly empty slots. Rows with
no entries add nothing to a packed chunk, in either order (packing.py): the chunk's entries are
those of its target rows, back to back, exactly as a chunk of one example whose rows are the
target rows would hold them. So the target rows of a chunk unpack as that one-example chunk,
(1, N, k), and cost what the entries cost.
"""
from __future__ import annotations

import numpy as np

from kdstream.storage import packing
from kdstream.storage.schema import LENGTH_ARRAY, PER_CHUNK


def compact(raw: dict[str, np.ndarray], chunk_rows: int, k: int, first: int, start: int, stop: int,
            logprobs: str, cumulative: bool) -> dict[str, np.ndarray]:
    """Whole chunks of stored arrays read from row ``first`` (``raw``, as ``LogitStore._fetch``
    gives them) → the target rows (topk_len > 0) of examples [start, stop): ``example`` and
    ``position`` (N,), ``topk_len`` (N,), ``topk_ids`` (N, k) where ``topk_index`` was read, the
    other packed arrays unpacked to (N, k) (``cumulative``: qdelta codes summed, as
    ``packing.unpack``), the per-row arrays at those rows (N,)."""
    lengths = raw[LENGTH_ARRAY]
    pieces: list[dict[str, np.ndarray]] = []
    for a in range(0, len(lengths), chunk_rows):
        lens = lengths[a : a + chunk_rows]  # (n, L-1)
        ex, pos = np.nonzero(lens)
        kept = lens[ex, pos]  # (N_c,)
        piece = {"example": ex + (first + a), "position": pos, LENGTH_ARRAY: kept}
        for name, arr in raw.items():
            if name in PER_CHUNK or name == LENGTH_ARRAY:
                continue
            if name in packing.PACKED:  # the chunk's entries, seen as one example of N_c rows
                chunk = arr[a : a + chunk_rows].reshape(-1)[: kept.size * k].reshape(1, kept.size, k)
                if name == "topk_index":
                    c = a // chunk_rows
                    piece["topk_ids"] = packing.unpack_ids(chunk, kept[None], raw["id_table"][c : c + 1], 1)[0]
                else:
                    by_slot = packing.slot_major(name, logprobs)
                    fill = -np.inf if arr.dtype.kind == "f" else 0
                    piece[name] = packing.unpack(chunk, kept[None], by_slot, fill, by_slot and cumulative)[0]
            elif arr.ndim == 1:  # per example (example_id, length)
                piece[name] = arr[a : a + chunk_rows][ex]
            else:
                piece[name] = arr[a : a + chunk_rows][ex, pos]
        inside = (piece["example"] >= start) & (piece["example"] < stop)
        pieces.append({name: v[inside] for name, v in piece.items()})
    return {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]} if pieces else {}
