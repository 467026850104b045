"""Intervals for the study's findings: a bootstrap over the training windows (and over the seeds
when there are several), with a fixed generator so the same figures give the same report.

Each seed contributes the count of windows for every pattern of which models memorized them
(``window_patterns``); resampling N windows with replacement is a multinomial draw over those
patterns, so a replicate costs one draw per seed however many windows there are. With several
seeds a replicate first draws the seeds with replacement, then each drawn seed's windows.
The classifier's figures resample its repeated random 70/30 splits (one split per drawn seed):
the spread of a single split's AUC, not the narrower error of the mean over splits.
"""
from __future__ import annotations

import math

import numpy as np

REPLICATES = 2000
LEVEL = 0.95
SEED = 20260  # fixed: the same figures give the same intervals, run after run
MIN_WINDOWS = 5  # a finding's windows (its denominator, or the two counts it compares) below this: not testable
_Z = 1.959963984540054  # the normal quantile of LEVEL, for the Wilson interval


def window_patterns(memorized: dict[str, set[int]], examples: int) -> dict:
    """{"roles": [...], "counts": {"teacher+baseline": n, ..., "none": n}}: the number of windows
    for each combination of the roles that memorized them (roles in the given order)."""
    roles = list(memorized)
    counts: dict[str, int] = {}
    for i in set().union(*memorized.values()):
        key = "+".join(r for r in roles if i in memorized[r])
        counts[key] = counts.get(key, 0) + 1
    counts["none"] = examples - sum(counts.values())
    return {"roles": roles, "counts": counts}


def project(patterns: dict, roles: tuple[str, ...]) -> dict:
    """``window_patterns`` over ``roles`` only (the others' memorization forgotten)."""
    counts: dict[str, int] = {}
    for key, n in patterns["counts"].items():
        kept = "+".join(r for r in roles if r in _roles(key)) or "none"
        counts[kept] = counts.get(kept, 0) + n
    return {"roles": list(roles), "counts": counts}


class Windows:
    """Per-seed window patterns → pooled observed counts and bootstrap replicates of them.
    ``roles``: resample these roles' patterns only, so that a finding's interval does not move
    when other models (an arm, the filtered student) are added to the seeds."""

    def __init__(self, per_seed: list[dict], roles: tuple[str, ...]) -> None:
        per_seed = [project(p, roles) for p in per_seed]
        self.seeds = len(per_seed)
        self.keys = sorted({k for p in per_seed for k in p["counts"]})
        c = np.asarray([[p["counts"].get(k, 0) for k in self.keys] for p in per_seed], dtype=np.int64)  # (S, P)
        self.observed = c.sum(0)  # (P,)
        rng = np.random.default_rng(SEED)
        picks = rng.integers(0, self.seeds, size=(REPLICATES, self.seeds)) if self.seeds > 1 else \
            np.zeros((REPLICATES, 1), dtype=np.int64)
        reps = np.zeros((REPLICATES, len(self.keys)), dtype=np.int64)
        for j in range(self.seeds):  # the j-th seed drawn in each replicate
            for s in range(self.seeds):
                n = int(c[s].sum())
                draws = rng.multinomial(n, c[s] / max(n, 1), size=REPLICATES)  # (R, P)
                chosen = picks[:, j] == s
                reps[chosen] += draws[chosen]
        self.replicates = reps  # (R, P)

    def count(self, has: tuple[str, ...] = (), lacks: tuple[str, ...] = ()) -> tuple[int, np.ndarray]:
        """(observed, replicates (R,)) of the windows memorized by every role in ``has`` and by
        none in ``lacks``."""
        cols = [i for i, k in enumerate(self.keys)
                if all(r in _roles(k) for r in has) and not any(r in _roles(k) for r in lacks)]
        return int(self.observed[cols].sum()), self.replicates[:, cols].sum(1)

    def total(self) -> tuple[int, np.ndarray]:
        return int(self.observed.sum()), self.replicates.sum(1)


def _roles(key: str) -> set[str]:
    return set() if key == "none" else set(key.split("+"))


def percentile_interval(values: np.ndarray) -> tuple[float, float] | None:
    """The central LEVEL interval of the replicates that are not NaN (None if there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return None
    # no interpolation between replicates: an infinite ratio stays inf instead of becoming NaN
    lo, hi = np.percentile(v, [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)], method="inverted_cdf")
    return float(lo), float(hi)


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score interval of the proportion k / n at LEVEL."""
    p, z2 = k / n, _Z * _Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def share_interval(k: int, n: int, k_reps: np.ndarray, n_reps: np.ndarray) -> tuple[float, float]:
    """k / n's bootstrap interval, widened to the Wilson interval of the pooled windows where that
    is wider: a share of 0 or all has no bootstrap spread, yet 0 of 16 is not a certain 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = percentile_interval(np.where(n_reps > 0, k_reps / np.maximum(n_reps, 1), np.nan))
    lo, hi = wilson(k, n)
    return (lo, hi) if boot is None else (min(lo, boot[0]), max(hi, boot[1]))


def ratio_replicates(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den per replicate; inf where den is 0 and num is not, NaN where both are."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.where(num > 0, np.inf, np.nan))


def split_replicates(per_seed: list[list[float]] | list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(replicates of the seeds' mean over one random split each, (R,) or (R, F); the seed and
    split indices' draws) for per-seed arrays of the classifier's repeats ((repeats,) or (repeats, F))."""
    rng = np.random.default_rng(SEED)
    arrays = [np.asarray(a, dtype=np.float64) for a in per_seed]
    seeds = len(arrays)
    picks = rng.integers(0, seeds, size=(REPLICATES, seeds)) if seeds > 1 else np.zeros((REPLICATES, 1), np.int64)
    total = np.zeros((REPLICATES, *arrays[0].shape[1:]))
    for j in range(seeds):
        for s, a in enumerate(arrays):
            repeat = rng.integers(0, len(a), size=REPLICATES)
            chosen = picks[:, j] == s
            total[chosen] += a[repeat[chosen]]
    return total / seeds


def verdict(testable: bool, point_ok: bool, interval_ok: bool, why: str = "") -> str:
    """reproduced (the interval clears the criterion) | direction only (the figure meets it, the
    interval straddles it) | not reproduced | not testable (why)."""
    if not testable:
        return "not testable" + (f" ({why})" if why else "")
    if not point_ok:
        return "not reproduced"
    return "reproduced" if interval_ok else "direction only"
