"""Per-example match metrics between generated and true suffixes."""
from __future__ import annotations

import numpy as np


def match_metrics(generated: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """generated, truth: (S, n) token ids → per-example arrays of length S.

    exact: every suffix token reproduced (the paper's "memorized").
    frac_matched: share of positions where the tokens agree (Pythia's memorization score).
    prefix_match_len: number of leading suffix tokens reproduced before the first divergence.
    """
    if generated.shape != truth.shape:
        raise ValueError(f"generated {generated.shape} and true {truth.shape} suffixes differ in shape")
    eq = generated == truth  # (S, n)
    first_miss = np.where(eq.all(axis=1), eq.shape[1], np.argmin(eq, axis=1))
    return {
        "exact": eq.all(axis=1),
        "frac_matched": eq.mean(axis=1),
        "prefix_match_len": first_miss.astype(np.int64),
    }
