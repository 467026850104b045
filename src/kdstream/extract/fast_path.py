"""Teacher-forced extraction verdicts: one forward pass instead of n decoding steps.

Greedy decoding reproduces the suffix exactly iff, at every suffix position, the argmax given
the *true* preceding tokens is the true token: until the first miss, greedy decoding and
teacher forcing condition on the same tokens. So from teacher-forced argmaxes we get exactly
what greedy generation would give for

- ``exact_match`` (the memorization verdict),
- ``prefix_match_len`` (where the first divergence is),

and nothing more: after a divergence greedy decoding conditions on its own (wrong) token while
teacher forcing keeps the true one, so ``tf_frac_matched`` (share of suffix positions whose
teacher-forced argmax is the true token) is *not* Pythia's greedy ``frac_matched``, and the edit
distance / approximate match need ``--method generate``.

``margin`` is the smallest top-1 − top-2 logprob gap over the suffix positions up to and
including the first divergence (all n when it matches): the positions that decide the verdict.
A margin below ``NEAR_TIE`` means a rounding difference between two engines (prefill vs decode
kernels, batch composition, dtype) can flip the verdict; such examples are flagged, not hidden.
"""
from __future__ import annotations

import numpy as np

# Logprob gap below which a verdict is a numerical near-tie. fp32 engines differ by ~1e-5 in
# logprobs; bf16/fp16 by ~1e-2, so compare low-precision runs with their margins in view.
NEAR_TIE = 1e-3


def teacher_forced_metrics(argmax_ids: np.ndarray, gap: np.ndarray, truth: np.ndarray,
                           hit: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """argmax_ids, gap, truth: (S, n) → per-example arrays of length S (plus argmax_ids (S, n)).

    ``hit`` (S, n) overrides ``argmax_ids == truth`` (the store method uses rank == 1).
    """
    if hit is None:
        hit = argmax_ids == truth  # (S, n)
    n = truth.shape[1]
    exact = hit.all(axis=1)
    first_miss = np.where(exact, n, np.argmin(hit, axis=1))  # (S,)
    # positions 0 .. first_miss (inclusive, capped at n-1) decide the verdict
    deciding = np.arange(n)[None, :] <= np.minimum(first_miss, n - 1)[:, None]  # (S, n)
    margin = np.where(deciding, gap, np.inf).min(axis=1)
    return {
        "exact": exact,
        "prefix_match_len": first_miss.astype(np.int64),
        "tf_frac_matched": hit.mean(axis=1),
        "margin": margin.astype(np.float32),
        "argmax_ids": argmax_ids.astype(np.int64),
    }


def store_metrics(rows: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Verdicts from a teacher store alone, for suffix tokens ``input_ids[:, start:stop]``.

    Store row t predicts input_ids[t+1] and ``target_rank`` is 1-based (storage/schema.py), so
    the suffix is decided by rows start-1 .. stop-2, and a position is matched iff rank == 1.
    The store's teacher saw each example from token 0: this equals the teacher's fast path only
    with ``offset`` 0. With k = 1 the store holds no second-best token and the margin is NaN.
    """
    sl = slice(start - 1, stop - 1)
    ids, lps = rows["topk_ids"][:, sl], rows["topk_logprobs"][:, sl]  # (S, n, k)
    gap = lps[..., 0] - lps[..., 1] if lps.shape[-1] > 1 else np.full(lps.shape[:2], np.nan, np.float32)
    truth = rows["input_ids"][:, start:stop]
    return teacher_forced_metrics(ids[..., 0], gap, truth, hit=rows["target_rank"][:, sl] == 1)
