"""How many of each row's top-k entries a ragged store keeps (``precompute-logits --top-p / --budget``).

A fixed top-k spends k slots where the teacher is sure and truncates where it is unsure. A
selection keeps a prefix of each row's sorted top-``max_k`` list, its length chosen per row:

- ``top_p``: the smallest prefix whose probability mass reaches ``p`` (nucleus), at least
  ``min_k`` and at most ``max_k`` entries.
- ``budget``: on average ``budget`` entries per position, allocated within one chunk to the
  largest probabilities across all its positions (greedy water-filling: for a fixed number of
  entries it minimises the chunk's total tail mass). Every row first gets ``min_k``; the
  remaining ``budget·P - min_k·P`` entries of a chunk of P positions go to the largest of the
  entries beyond slot ``min_k``, all rows competing; ties at the threshold are all kept (a chunk
  may hold slightly more). A row never holds more than ``max_k`` (its list ends there).

Both act on the teacher's exact (float) logprobs, before encoding: the rows' lengths are stored
(``topk_len``, schema.py) and the slots past them are padding (docs/store-format.md).
The ``selection`` group attribute records the rule, as ``describe`` gives it.
"""
from __future__ import annotations

import numpy as np

KINDS = ("top_p", "budget")


def describe(kind: str, max_k: int, min_k: int = 1, p: float | None = None,
             budget: float | None = None) -> dict:
    """The ``selection`` attribute: ``{"kind": "top_p", "p", "min_k", "max_k"}`` or
    ``{"kind": "budget", "budget", "min_k", "max_k"}``. ValueError on an unknown kind or a value
    outside its range (the option checks of precompute-logits say the same in one line first)."""
    if not 1 <= min_k <= max_k:
        raise ValueError(f"min_k {min_k} must be in 1..max_k ({max_k})")
    if kind == "top_p":
        if p is None or not 0.0 < p <= 1.0:
            raise ValueError(f"top_p needs 0 < p <= 1, got {p}")
        return {"kind": "top_p", "p": float(p), "min_k": int(min_k), "max_k": int(max_k)}
    if kind == "budget":
        if budget is None or not min_k <= budget <= max_k:
            raise ValueError(f"budget needs min_k ({min_k}) <= budget <= max_k ({max_k}), got {budget}")
        return {"kind": "budget", "budget": float(budget), "min_k": int(min_k), "max_k": int(max_k)}
    raise ValueError(f"unknown selection kind {kind!r}; expected one of {KINDS}")


def lengths(logprobs: np.ndarray, selection: dict) -> np.ndarray:
    """(..., max_k) descending logprobs of one chunk → (...,) int64 entries kept per row, per
    ``selection`` (``describe``)."""
    if selection["kind"] == "top_p":
        return top_p_lengths(logprobs, selection["p"], selection["min_k"])
    if selection["kind"] == "budget":
        return budget_lengths(logprobs, selection["budget"], selection["min_k"])
    raise ValueError(f"unknown selection kind {selection['kind']!r}; expected one of {KINDS}")


def top_p_lengths(logprobs: np.ndarray, p: float, min_k: int = 1) -> np.ndarray:
    """(..., K) descending logprobs → (...,) the smallest n with sum_{j<n} exp(logprob_j) >= p,
    clipped to [min_k, K] (K where even the whole list holds less than p)."""
    mass = np.cumsum(np.exp(np.asarray(logprobs, dtype=np.float64)), axis=-1)  # (..., K) mass of each prefix
    n = (mass < p).sum(-1) + 1  # (...,) prefixes below p, plus the one that reaches it
    return np.clip(n, min_k, logprobs.shape[-1]).astype(np.int64)


def budget_lengths(logprobs: np.ndarray, budget: float, min_k: int = 1) -> np.ndarray:
    """(..., K) descending logprobs of one chunk's P positions → (...,) lengths whose sum is
    round(budget · P) (more by the ties at the threshold), each in [min_k, K]: every row keeps
    its first min_k entries, then the largest entries beyond them, across all rows."""
    lp = np.asarray(logprobs)
    k = lp.shape[-1]
    rows = lp.reshape(-1, k)  # (P, K)
    positions = len(rows)
    base = np.full(rows.shape[0], min_k, dtype=np.int64)
    extra = int(round(budget * positions)) - min_k * positions  # entries left to allocate
    rest = rows[:, min_k:]  # (P, K - min_k) the entries that compete
    if extra <= 0 or rest.size == 0:
        return base.reshape(lp.shape[:-1])
    if extra >= rest.size:
        return np.full(lp.shape[:-1], k, dtype=np.int64)
    flat = rest.ravel()
    threshold = np.partition(flat, flat.size - extra)[flat.size - extra]  # the extra-th largest
    # rows are descending, so the entries >= the threshold are a prefix of each row
    return (base + (rest >= threshold).sum(-1)).reshape(lp.shape[:-1])


def pad_mask(lengths: np.ndarray, k: int) -> np.ndarray:
    """(...,) lengths → (..., k) bool, True at the padding slots (j >= length)."""
    return np.arange(k, dtype=lengths.dtype) >= lengths[..., None]
