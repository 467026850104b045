"""Compact on-disk encodings of teacher log-probabilities, and their decoding.

``qdelta`` (the default) stores each row's top-k logprobs (descending) as uint16 codes on a fixed
log grid of step ``scale`` nats, delta-coded along k:

    c_j  = round(-logprob_j / scale)             (non-decreasing in j, since logprobs descend)
    d_0  = c_0,  d_j = c_j - c_{j-1} >= 0        (small integers: cheap after bit shuffle + zstd)

Each row also holds one int16 ``topk_shift`` code h (format version 3 and later), and the decoded row is

    logprob_j = -c_j * scale + h * shift_scale        (c = cumsum(d), shift_scale = scale / 1024)

The writer (``encode_offset``) picks h in 0..1024 first and then the codes on the grid that h
shifts, c_j = round(h / 1024 - logprob_j / scale), so every decoded value is within scale/2 of
the teacher's: ``max_abs_error`` = scale/2 = 0.00962 nats at scale 1/52. Among the offsets it
picks one whose decoded top-k mass is the teacher's to a factor exp(±shift_scale/2) (±9.4e-6):
the decoded mass moves continuously with h between the points where a code steps, and its mean
over h is at least the teacher's mass, so such an h exists (below). The tail mass is what the
decoded top-k leaves, 1 - sum_j exp(logprob_j). (Stores written before kdstream chose h this way
have scale 1/104 and h computed after rounding the codes, h = round((log(1 - tail) -
logsumexp(-c * scale)) / shift_scale), whose error adds to the codes': max_abs_error = scale *
(1 + 1/2048). They decode with the same formula.)

The true token's logprob is an int32 ``target_code`` r, a residual against the row's codes:

    target_logprob = -(r + 512 * c_ref) * target_scale     (target_scale = scale / 512)

with c_ref = c at slot rank - 1 when rank <= k, else the last code c_{k-1}. Where the target is
one of the top-k (most positions: docs/benchmarks.md, store encoding), |r| <= 768 (half a step,
plus the shift's step at most): it compresses to about half a float32's bytes, within target_scale/2 = 1.9e-5 nats at
scale 1/52 (``target_max_abs_error`` = target_scale allows for float32 rounding). Values below
-65535 * scale (top-k) or -2^31 * target_scale (target) nats are clamped there.

Version 2 (scale 1/128) stored a float32 ``tail_mass`` instead of the shift, renormalised on read
(``decode_topk``), and a float32 target; ``fp32`` stores exact float32 logprobs, tail and target.
"""
from __future__ import annotations

import numpy as np

ENCODINGS = ("qdelta", "fp32", "sampled")
MAX_SAMPLES = 255  # counts are uint8
DEFAULT_ENCODING = "qdelta"
QDELTA_SCALE = 1.0 / 52  # nats per code: decoded error <= scale / 2 = 0.0096 nats (encode_offset)
# shift_scale = scale / 1024: h in 0..1024 (int16); the top-k mass is kept to 9.4e-6 relative
SHIFT_STEPS = 1024
TARGET_STEPS = 512  # target_scale = scale / 512: the target code is an integer residual against the top-k codes
_MAX_CODE = np.iinfo(np.uint16).max
_MAX_TARGET = np.iinfo(np.int32).max  # target logprobs below -2^31 * target_scale (~ -41,000 nats) are clamped


def encoding_attrs(encoding: str, samples: int | None = None) -> dict:
    """What the ``encoding`` group attribute records: enough to decode with plain numpy."""
    if encoding == "sampled":
        if samples is None or not 1 <= samples <= MAX_SAMPLES:
            raise ValueError(f"sampled targets need 1 <= samples <= {MAX_SAMPLES}, got {samples}")
        return {"topk_logprobs": "sampled", "samples": int(samples), "scale": None, "max_abs_error": None}
    if encoding == "fp32":
        return {"topk_ids": "id_table", "topk_logprobs": "fp32", "scale": None, "max_abs_error": 0.0,
                "target_max_abs_error": 0.0}
    if encoding == "qdelta":
        scale = QDELTA_SCALE
        return {"topk_ids": "id_table", "topk_logprobs": "qdelta", "scale": scale,
                "shift_scale": scale / SHIFT_STEPS, "target_scale": scale / TARGET_STEPS,
                "max_abs_error": scale / 2,
                "target_max_abs_error": scale / TARGET_STEPS}  # half a step + float32 rounding
    raise ValueError(f"unknown logprob encoding {encoding!r}; expected one of {ENCODINGS}")


def codes(logprobs: np.ndarray, scale: float) -> np.ndarray:
    """Absolute codes round(-logprob / scale) as int64, clamped to the uint16 range."""
    lp = np.asarray(logprobs, dtype=np.float64)  # -inf → the largest code
    return np.clip(np.rint(-lp / scale), 0, _MAX_CODE).astype(np.int64)


def tail_mass(topk_logprobs: np.ndarray) -> np.ndarray:
    """(..., k) logprobs → (...,) float32 probability left outside the top-k, clipped to [0, 1]."""
    mass = np.exp(np.asarray(topk_logprobs, dtype=np.float64)).sum(-1)
    return np.clip(1.0 - mass, 0.0, 1.0).astype(np.float32)


def decoded_tail(logprobs: np.ndarray) -> np.ndarray:
    """(..., k) float32 decoded logprobs → (...,) float32 tail 1 - sum exp, clipped to [0, 1].

    In float32 (faster than ``tail_mass``, which the writer uses on the exact values): the
    sum's rounding, ~1e-7, is far below the encoding's own mass error (exp(±shift_scale/2))."""
    mass = np.exp(logprobs).sum(-1)  # (...,) pairwise float32 summation over k
    return np.clip(np.float32(1) - mass, 0, 1)


def encode_topk(topk_logprobs: np.ndarray, scale: float) -> np.ndarray:
    """(..., k) descending logprobs → (..., k) uint16 delta codes (d_0 = c_0, d_j = c_j - c_{j-1})."""
    c = codes(topk_logprobs, scale)
    c = np.maximum.accumulate(c, axis=-1)  # ties in fp noise must not make a negative delta
    return np.diff(c, axis=-1, prepend=0).astype(np.uint16)


def cumulative_codes(deltas: np.ndarray) -> np.ndarray:
    """(..., k) uint16 delta codes → (..., k) uint16 absolute codes c_j.

    Summed in uint16: the encoder clamps every c_j to 65535 and they are non-decreasing, so the
    running sum never exceeds 65535 (a chunk whose bytes were changed is refused by its checksum
    first). numpy's cumsum is much faster without a dtype conversion, and this is the reader's
    hottest loop."""
    return np.cumsum(deltas, axis=-1, dtype=np.uint16)


def decode_topk(deltas: np.ndarray, tail: np.ndarray, scale: float) -> np.ndarray:
    """Version 2: (..., k) uint16 delta codes + (...,) tail mass → (..., k) float32 logprobs,
    renormalised so that sum_j exp(logprob_j) = 1 - tail (rows whose top-k mass is 0 are left unshifted)."""
    lp = np.cumsum(deltas, axis=-1, dtype=np.int64).astype(np.float32) * np.float32(-scale)  # (..., k)
    top = lp[..., :1]  # (..., 1) the row's largest value: a stable logsumexp
    lse = top[..., 0] + np.log(np.exp(lp - top).sum(-1))  # (...,)
    with np.errstate(divide="ignore"):
        target = np.log1p(-np.asarray(tail, dtype=np.float64)).astype(np.float32)  # (...,) log top-k mass
    shift = np.where(np.isfinite(target), target - lse, np.float32(0))
    return lp + shift[..., None].astype(np.float32)


def shift_codes(cum: np.ndarray, tail: np.ndarray, scale: float, shift_scale: float) -> np.ndarray:
    """(..., k) absolute codes (``cumulative_codes``) + (...,) exact tail mass → (...,) int16 shift
    codes h = round((log(1 - tail) - logsumexp(-c * scale)) / shift_scale); 0 where the top-k
    mass is 0. The logsumexp is of the float32 values the reader computes before shifting.

    The shift of stores written before ``encode_offset`` (scale 1/104); kept to measure against
    (benchmarks/research/store_encoding_search.py) and to test that such stores still read."""
    lp = np.multiply(cum, np.float32(-scale), dtype=np.float32).astype(np.float64)  # (..., k) as decoded, unshifted
    top = lp[..., :1]
    lse = top[..., 0] + np.log(np.exp(lp - top).sum(-1))  # (...,)
    with np.errstate(divide="ignore"):
        want = np.log1p(-np.asarray(tail, dtype=np.float64))  # (...,) log of the exact top-k mass
    s = np.where(np.isfinite(want), want - lse, 0.0)
    return np.clip(np.rint(s / shift_scale), -32767, 32767).astype(np.int16)


def encode_offset(topk_logprobs: np.ndarray, tail: np.ndarray, scale: float,
                  steps: int = SHIFT_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """(..., k) exact descending logprobs + (...,) exact tail mass → (..., k) uint16 delta codes and
    (...,) int16 shift codes h in 0..steps, such that every decoded -c * scale + h * scale / steps
    is within scale/2 of its logprob and the decoded top-k mass is 1 - tail to exp(±scale/steps/2).

    Write u = h / steps and x_j = -logprob_j / scale. With c_j = round(u + x_j) the decoded error
    of entry j is scale * (u + x_j - c_j), in [-scale/2, scale/2] for every u. As u grows each error
    grows with it, so the decoded mass W(u) = e^(scale*u) * base grows, until the code of some entry
    steps at u = t_j (where u + x_j crosses a half integer) and W drops by that entry's share times
    (1 - e^-scale). Between steps (the k + 1 segments of [0, 1] cut at the sorted t_j) W is
    e^(scale*u) times a constant, so each segment's solution of W(u) = 1 - tail is one log. W's mean
    over u is the teacher's mass times sinh(scale/2)/(scale/2) >= 1 and W only drops at steps, so
    W(u) = 1 - tail on some segment's rising part (unless W's ups and downs are all smaller than
    the mean's excess over 1 - tail, 1.5e-5 relative at scale 1/52: then the search below keeps
    an h within it). The first segment whose solution, rounded to the grid of h,
    stays inside it gives h; rows where none does (an exact tie of two steps, rare on real values)
    try every h and keep the one whose mass is closest."""
    lp = np.asarray(topk_logprobs, dtype=np.float64)
    shape, k = lp.shape, lp.shape[-1]
    lp = lp.reshape(-1, k)  # (n, k)
    n = len(lp)
    finite = np.isfinite(lp)  # -inf entries: no mass, the largest code
    x = np.where(finite, -lp / scale, 0.0)  # (n, k) codes as reals, ascending in j
    g = (x + 0.5) % 1.0  # (n, k): the error at u = 0 is scale * (g - 1/2)
    term = np.where(finite, np.exp(lp + scale * (g - 0.5)), 0.0)  # (n, k) each entry's decoded mass at u = 0
    order = np.argsort(1.0 - g, axis=1)  # entries by the u at which their code steps
    steps_at = np.take_along_axis(1.0 - g, order, 1)  # (n, k) ascending
    dropped = np.cumsum(np.take_along_axis(term, order, 1), 1) * -np.expm1(-scale)  # (n, k)
    total = term.sum(1, keepdims=True)  # (n, 1)
    base = np.concatenate([total, total - dropped], 1)  # (n, k+1): W(u) = e^(scale*u) * base on segment s
    lo = np.concatenate([np.zeros((n, 1)), steps_at], 1)  # (n, k+1) segment bounds in u
    hi = np.concatenate([steps_at, np.ones((n, 1))], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.log1p(-np.asarray(tail, dtype=np.float64).reshape(n, 1))  # (n, 1) log of the top-k mass
        u = (want - np.log(base)) / scale  # (n, k+1) each segment's solution
    h = np.rint(np.where(np.isfinite(u), u, 0.0) * steps)  # (n, k+1) rounded to the grid of h
    inside = (np.isfinite(u) & (h >= 0) & (h <= steps)
              & ((h / steps > lo) | (lo == 0)) & ((h / steps < hi) | (hi == 1)))  # strictly: a step is a tie
    found = inside.any(1)
    h = np.where(found, h[np.arange(n), inside.argmax(1)], 0.0)  # (n,)
    lost = np.flatnonzero(~found & np.isfinite(want[:, 0]))
    grid = np.arange(steps + 1.0)
    for rows in np.array_split(lost, -(-len(lost) // 64)) if len(lost) else ():  # every h: (64, steps + 1, k)
        c = np.rint(grid[:, None] / steps + x[rows, None, :])
        mass = np.where(finite[rows, None, :], np.exp(scale * (grid[:, None] / steps - c)), 0.0).sum(-1)
        h[rows] = grid[np.abs(np.log(mass) - want[rows]).argmin(1)]
    c = np.clip(np.rint(h[:, None] / steps + x), 0, _MAX_CODE)
    c = np.where(finite, c, _MAX_CODE).astype(np.int64)
    c = np.maximum.accumulate(c, axis=1)  # ties in fp noise must not make a negative delta
    deltas = np.diff(c, axis=1, prepend=0).astype(np.uint16).reshape(shape)
    return deltas, h.astype(np.int16).reshape(shape[:-1])


def decode_shifted(cum: np.ndarray, shift: np.ndarray, scale: float, shift_scale: float) -> np.ndarray:
    """(..., k) uint16 absolute codes + (...,) int16 shift codes → (..., k) float32 logprobs
    -c * scale + h * shift_scale, in two passes (the cast is part of the multiply)."""
    lp = np.multiply(cum, np.float32(-scale), dtype=np.float32)  # (..., k)
    lp += (shift.astype(np.float32) * np.float32(shift_scale))[..., None]
    return lp


def _reference_codes(cum: np.ndarray, rank: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """(..., k) absolute codes, (...,) ranks → (...,) float64 code of the target's top-k slot
    (rank - 1 when rank <= the row's length, else its last entry's). ``lengths`` (...,): a ragged
    row's entries in use (None: k). A ragged row's padding repeats its last code (``pad_deltas``),
    so slot min(rank, k) - 1 holds the same code: the lengths make it explicit, not different."""
    last = cum.shape[-1] - 1 if lengths is None else np.asarray(lengths, dtype=np.int64) - 1
    slot = np.clip(np.minimum(np.asarray(rank, dtype=np.int64) - 1, last), 0, cum.shape[-1] - 1)
    return np.take_along_axis(cum, slot[..., None], -1)[..., 0].astype(np.float64)


def encode_target(target_logprob: np.ndarray, cum: np.ndarray, rank: np.ndarray, target_scale: float,
                  lengths: np.ndarray | None = None) -> np.ndarray:
    """(...,) exact target logprobs → (...,) int32 residual codes r = round(-logprob / target_scale)
    - 512 * c_ref (c_ref: ``_reference_codes``); 0 where the target is exactly its top-k value's code."""
    ct = np.clip(np.rint(-np.asarray(target_logprob, dtype=np.float64) / target_scale), 0, _MAX_TARGET)
    return (ct - TARGET_STEPS * _reference_codes(cum, rank, lengths)).astype(np.int32)


def decode_target(code: np.ndarray, cum: np.ndarray, rank: np.ndarray, target_scale: float,
                  lengths: np.ndarray | None = None) -> np.ndarray:
    """(...,) int32 residual codes + the row's absolute codes and ranks → (...,) float32 target logprobs."""
    ref = _reference_codes(cum, rank, lengths)
    return (-(code.astype(np.float64) + TARGET_STEPS * ref) * target_scale).astype(np.float32)


def pad_deltas(deltas: np.ndarray, pad: np.ndarray) -> np.ndarray:
    """A ragged row's (..., k) delta codes with 0 at its padding slots (``pad``, bool): the padding
    then repeats the row's last code. Zeros cost least after bit shuffle + zstd (docs/store-format.md,
    ragged rows); readers mask the padding with the row's length (-inf)."""
    return np.where(pad, np.uint16(0), deltas)


def draw_samples(topk_ids: np.ndarray, topk_logprobs: np.ndarray, samples: int, width: int,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``samples`` draws per position from the top-k + one tail bucket (mass 1 - sum p).

    topk_ids, topk_logprobs (..., k) → sample_ids, sample_counts (..., width) (unique drawn ids,
    most drawn first, ties in top-k order; padded with id 0 and count 0) and sample_tail_count
    (...,): the draws that fell outside the top-k. ``width`` >= min(samples, k) holds every row.
    """
    p = np.exp(np.asarray(topk_logprobs, dtype=np.float64))  # (..., k)
    tail = np.clip(1.0 - p.sum(-1, keepdims=True), 0.0, 1.0)
    pvals = np.concatenate([p, tail], -1)
    pvals /= pvals.sum(-1, keepdims=True)  # (..., k+1)
    counts = rng.multinomial(samples, pvals.reshape(-1, pvals.shape[-1])).reshape(pvals.shape)
    top = counts[..., :-1]  # (..., k)
    order = np.argsort(-top, axis=-1, kind="stable")[..., :width]
    c = np.take_along_axis(top, order, -1)
    ids = np.where(c > 0, np.take_along_axis(np.asarray(topk_ids), order, -1), 0)
    return {"sample_ids": ids, "sample_counts": c.astype(np.uint8),
            "sample_tail_count": counts[..., -1].astype(np.uint8)}


def decode_samples(ids: np.ndarray, counts: np.ndarray, tail_count: np.ndarray, samples: int):
    """Sampled arrays → (topk_ids, topk_logprobs, tail_mass) a top-k loss can use unchanged.

    topk_logprobs = log(count / N) (-inf for padding), tail_mass = tail_count / N. Padding slots
    get distinct ids that no drawn id of the row uses (the smallest free ones), so that a student's
    tail bucket (1 - the mass of the listed ids) counts no token twice.
    """
    ids = ids.astype(np.int64)  # (..., W)
    c = counts.astype(np.int64)
    width = ids.shape[-1]
    drawn = c > 0
    cand = np.arange(2 * width)  # at most W ids are drawn, so W of these 2W are always free
    used = ((ids[..., :, None] == cand) & drawn[..., :, None]).any(-2)  # (..., 2W)
    free = np.argsort(used, axis=-1, kind="stable")[..., :width]  # free candidates, ascending
    n_drawn = drawn.sum(-1, keepdims=True)  # (..., 1): drawn ids come first
    slot = np.clip(np.arange(width) - n_drawn, 0, width - 1)
    topk_ids = np.where(drawn, ids, np.take_along_axis(free, slot, -1))
    with np.errstate(divide="ignore"):
        logprobs = np.log(c / samples).astype(np.float32)
    return topk_ids, logprobs, (tail_count.astype(np.float32) / np.float32(samples))


def draw_samples_by_example(topk_ids: np.ndarray, topk_logprobs: np.ndarray, samples: int, width: int,
                            seed: int, example_ids: np.ndarray) -> dict[str, np.ndarray]:
    """``draw_samples`` for (B, L-1, k) rows, example e drawing from its own generator
    ``default_rng([seed, e])``: the draws of an example depend on nothing else (not the batch,
    the chunk, the worker, or where a run resumed), so any way of writing a store draws the same."""
    parts = [draw_samples(topk_ids[i], topk_logprobs[i], samples, width, np.random.default_rng([seed, int(e)]))
             for i, e in enumerate(np.asarray(example_ids))]
    return {key: np.stack([p[key] for p in parts]) for key in parts[0]}
