"""Per-example match metrics between generated and true suffixes."""
from __future__ import annotations

import numpy as np


APPROX_FRACTION = 0.1  # approximate match: token edit distance <= 10% of the suffix (Gemma reports)


def edit_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Token-level Levenshtein distance per row; a, b (S, n) → (S,).

    Dynamic programming over the (n+1) x (n+1) table, vectorized across examples, so the cost is
    n^2 numpy operations on length-S vectors rather than S * n^2 Python steps.
    """
    S, n = a.shape
    m = b.shape[1]
    prev = np.tile(np.arange(m + 1), (S, 1))  # distances from the empty prefix of a
    for i in range(1, n + 1):
        cur = np.empty_like(prev)
        cur[:, 0] = i
        sub = prev[:, :-1] + (a[:, i - 1 : i] != b)  # (S, m): substitute or keep
        dele = prev[:, 1:] + 1  # delete a[i-1]
        best = np.minimum(sub, dele)
        for j in range(1, m + 1):  # insertions depend on the cell to the left
            cur[:, j] = np.minimum(best[:, j - 1], cur[:, j - 1] + 1)
        prev = cur
    return prev[:, m]


def match_metrics(generated: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """generated, truth: (S, n) token ids → per-example arrays of length S.

    exact: every suffix token reproduced (the paper's "memorized").
    frac_matched: share of positions where the tokens agree (Pythia's memorization score).
    prefix_match_len: number of leading suffix tokens reproduced before the first divergence.
    edit_distance / approx: token edit distance, and whether it is <= 10% of the suffix length.
    """
    if generated.shape != truth.shape:
        raise ValueError(f"generated {generated.shape} and true {truth.shape} suffixes differ in shape")
    eq = generated == truth  # (S, n)
    first_miss = np.where(eq.all(axis=1), eq.shape[1], np.argmin(eq, axis=1))
    dist = edit_distance(generated, truth)
    return {
        "exact": eq.all(axis=1),
        "frac_matched": eq.mean(axis=1),
        "prefix_match_len": first_miss.astype(np.int64),
        "edit_distance": dist.astype(np.int64),
        "approx": dist <= APPROX_FRACTION * truth.shape[1],
    }
