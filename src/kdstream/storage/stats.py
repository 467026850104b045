"""Size and fidelity of a logit store: bytes per token, how much probability the top-k keeps.

Reads whole chunks of only the three arrays it needs, with constant memory (the mass quantile
comes from a fine histogram), so it runs on large and remote stores; ``sample_rows`` limits the
read to the first N examples.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from kdstream.storage.chunks import DONE_ARRAY
from kdstream.storage.integrity import MANIFEST_ARRAY
from kdstream.storage.reader import disk_bytes, open_store
from kdstream.storage.schema import token_counts

_MASS_BINS = 1 << 16  # histogram resolution of the top-k mass in [0, 1]: p10 within 1.6e-5


def _quantile_from_hist(counts: np.ndarray, q: float) -> float:
    """The q-quantile of values in [0, 1] from their counts in ``_MASS_BINS + 1`` equal bins:
    the value of rank ceil(q·N) (numpy's ``method="inverted_cdf"``), to within one bin."""
    cum = np.cumsum(counts)
    if cum[-1] == 0:
        return float("nan")
    rank = max(1, math.ceil(round(q * int(cum[-1]), 9)))  # round: 0.1 * 150 is 15.000000000000002
    idx = int(np.searchsorted(cum, rank))  # first bin holding the value of that rank
    return min(1.0, (idx + 0.5) / _MASS_BINS)


def _count_quantile(hist: np.ndarray, q: float) -> float:
    """The q-quantile (``inverted_cdf``) of integers 0..len-1 from their counts; nan when empty."""
    cum = np.cumsum(hist)
    if not len(cum) or cum[-1] == 0:
        return float("nan")
    return float(np.searchsorted(cum, max(1, math.ceil(round(q * int(cum[-1]), 9)))))


def _sizes(url: str, names: tuple[str, ...]) -> tuple[int | None, dict[str, int | None]]:
    """Bytes of the whole store and of each array; None where the filesystem cannot list
    (a plain HTTP server without directory listings).

    The whole store is its group's zarr.json plus its arrays, not whatever else shares the
    folder: a dataset card (README.md, `kdstream store card`) or an uploader's cache there would
    otherwise change bytes_on_disk after the card that quotes it was written."""

    def du(path: str) -> int | None:
        try:
            size = disk_bytes(path)
        except (OSError, NotImplementedError, ValueError):
            return None
        return size or None  # 0: nothing listed (every part of a store holds at least a zarr.json)

    url = str(url).rstrip("/")
    per_array = {name: du(f"{url}/{name}") for name in names}
    parts = [du(f"{url}/zarr.json"), *per_array.values()]
    return (None if None in parts else sum(parts)), per_array


def format_size(n: int | None) -> str:
    """``44,050 B (43.02 KiB)``: how `store stats` and the dataset card print a size."""
    if n is None:
        return "unknown (the filesystem cannot list)"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n:,} B ({n / scale:.2f} {unit})"
    return f"{n:,} B"


def store_stats(url: str, sample_rows: int | None = None) -> dict[str, Any]:
    """Size and top-k fidelity of the complete store at ``url`` (path or fsspec URL).

    Per position (row t of an example): entries = the entries stored (topk_len[t] in a ragged
    store, k otherwise), mass = Σ exp(topk_logprobs[t]) over them (the captured mass), tail =
    1 − mass, target in top-k when target_rank[t] <= entries, NLL = −target_logprob[t].
    """
    store = open_store(url)
    n, k = len(store), store.k
    rows = n if sample_rows is None else max(0, min(int(sample_rows), n))
    tokens = token_counts(store.attrs)[0]  # of the whole store: bytes_per_token is about what is on disk

    mass_hist = np.zeros(_MASS_BINS + 1, dtype=np.int64)
    mass_sum = nll_sum = 0.0
    in_topk = positions = 0
    entries_hist = np.zeros(k + 1, dtype=np.int64)  # rows by entries stored, 0..k
    step = store.chunk_rows
    keys = ("topk_logprobs", "target_logprob", "target_rank")
    for start in range(0, rows, step):  # whole chunks (the last one cut at `rows`)
        # the positions a loss reads: a conversation store's target rows, every row of a window store
        batch = store.read_targets(start, min(start + step, rows), keys)
        entries_hist += np.bincount(batch["topk_len"], minlength=k + 1)[: k + 1]
        mass = np.exp(batch["topk_logprobs"].astype(np.float64)).sum(-1)  # (n,)
        bins = np.clip((mass * _MASS_BINS).astype(np.int64), 0, _MASS_BINS)
        mass_hist += np.bincount(bins.ravel(), minlength=_MASS_BINS + 1)
        mass_sum += float(mass.sum())
        nll_sum -= float(batch["target_logprob"].astype(np.float64).sum())
        in_topk += int((batch["target_rank"] <= batch["topk_len"]).sum())
        positions += mass.size

    # chunk_done (5 B per chunk) and the manifest (4 B per chunk and array) are counted too
    extra = tuple(name for name in (DONE_ARRAY, MANIFEST_ARRAY) if name in store.group)
    total, per_array = _sizes(url, tuple(store._arrays) + extra)

    def mean(total_over_positions: float) -> float:
        return total_over_positions / positions if positions else float("nan")

    return {
        "store": str(url),
        "store_identity": store.identity,  # None before format version 4
        "examples": n,
        "seq_len": store.seq_len,
        "k": k,
        "vocab_size": store.vocab_size,
        "tokens": tokens,
        "bytes_on_disk": total,
        "bytes_per_token": total / tokens if total is not None and tokens else None,
        "array_bytes": per_array,
        "rows_read": rows,
        "positions_read": positions,
        "selection": store.attrs.get("selection") or {"kind": "top_k", "max_k": k},
        "entries_mean": float((entries_hist * np.arange(k + 1)).sum() / positions) if positions else float("nan"),
        "entries_p10": _count_quantile(entries_hist, 0.10),
        "entries_p90": _count_quantile(entries_hist, 0.90),
        "topk_mass_mean": mean(mass_sum),  # the captured mass
        "topk_mass_p10": _quantile_from_hist(mass_hist, 0.10),
        "tail_mass_mean": 1.0 - mean(mass_sum),
        "logprob_encoding": store.encoding["topk_logprobs"],
        # the encoding's stated bound on |decoded - teacher| (0 for fp32), checked by the tests
        "logprob_max_abs_error": store.encoding["max_abs_error"],  # None for sampled targets
        "target_in_topk": mean(in_topk),
        "mean_target_nll": mean(nll_sum),
    }
