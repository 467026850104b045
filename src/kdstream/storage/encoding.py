"""Compact on-disk encodings of teacher log-probabilities (format version 2), and their decoding.

``qdelta`` (the default) stores each row's top-k logprobs (descending) as uint16 codes on a fixed
log grid of step ``scale`` nats, delta-coded along k:

    c_j  = round(-logprob_j / scale)             (non-decreasing in j, since logprobs descend)
    d_0  = c_0,  d_j = c_j - c_{j-1} >= 0        (small integers: cheap after byte shuffle + zstd)

and the row's tail mass ``1 - sum_j exp(logprob_j)`` as float32. Decoding takes the cumulative
sum, multiplies by ``-scale``, then shifts the row by one constant so that the top-k mass is
exactly ``1 - tail_mass``: the decoded top-k + tail bucket is a proper distribution whose tail is
the teacher's. Each code is off by at most scale/2 and the shift (a weighted mean of those errors)
by at most scale/2 again, so every decoded logprob is within ``scale`` of the teacher's value
(``max_abs_error`` in the attributes). Values below -65535·scale nats are clamped there.

``fp32`` stores the logprobs as float32 (exact), with the same tail_mass array. Either way the
true token's ``target_logprob`` stays float32: perplexities computed from the store are exact.
"""
from __future__ import annotations

import numpy as np

ENCODINGS = ("qdelta", "fp32", "sampled")
MAX_SAMPLES = 255  # counts are uint8
DEFAULT_ENCODING = "qdelta"
QDELTA_SCALE = 1.0 / 128  # nats per code: decoded error <= 1/128 = 0.0078 nats (bound above)
_MAX_CODE = np.iinfo(np.uint16).max


def encoding_attrs(encoding: str, samples: int | None = None) -> dict:
    """What the ``encoding`` group attribute records: enough to decode with plain numpy."""
    if encoding == "sampled":
        if samples is None or not 1 <= samples <= MAX_SAMPLES:
            raise ValueError(f"sampled targets need 1 <= samples <= {MAX_SAMPLES}, got {samples}")
        return {"topk_logprobs": "sampled", "samples": int(samples), "scale": None, "max_abs_error": None}
    if encoding == "fp32":
        return {"topk_logprobs": "fp32", "scale": None, "max_abs_error": 0.0}
    if encoding == "qdelta":
        return {"topk_logprobs": "qdelta", "scale": QDELTA_SCALE, "max_abs_error": QDELTA_SCALE}
    raise ValueError(f"unknown logprob encoding {encoding!r}; expected one of {ENCODINGS}")


def codes(logprobs: np.ndarray, scale: float) -> np.ndarray:
    """Absolute codes round(-logprob / scale) as int64, clamped to the uint16 range."""
    lp = np.asarray(logprobs, dtype=np.float64)  # -inf → the largest code
    return np.clip(np.rint(-lp / scale), 0, _MAX_CODE).astype(np.int64)


def tail_mass(topk_logprobs: np.ndarray) -> np.ndarray:
    """(..., k) logprobs → (...,) float32 probability left outside the top-k, clipped to [0, 1]."""
    mass = np.exp(np.asarray(topk_logprobs, dtype=np.float64)).sum(-1)
    return np.clip(1.0 - mass, 0.0, 1.0).astype(np.float32)


def encode_topk(topk_logprobs: np.ndarray, scale: float) -> np.ndarray:
    """(..., k) descending logprobs → (..., k) uint16 delta codes (d_0 = c_0, d_j = c_j - c_{j-1})."""
    c = codes(topk_logprobs, scale)
    c = np.maximum.accumulate(c, axis=-1)  # ties in fp noise must not make a negative delta
    return np.diff(c, axis=-1, prepend=0).astype(np.uint16)


def decode_topk(deltas: np.ndarray, tail: np.ndarray, scale: float) -> np.ndarray:
    """(..., k) uint16 delta codes + (...,) tail mass → (..., k) float32 logprobs, renormalised so
    that sum_j exp(logprob_j) = 1 - tail (rows whose top-k mass is 0 are left unshifted)."""
    lp = np.cumsum(deltas, axis=-1, dtype=np.int64).astype(np.float32) * np.float32(-scale)  # (..., k)
    top = lp[..., :1]  # (..., 1) the row's largest value: a stable logsumexp
    lse = top[..., 0] + np.log(np.exp(lp - top).sum(-1))  # (...,)
    with np.errstate(divide="ignore"):
        target = np.log1p(-np.asarray(tail, dtype=np.float64)).astype(np.float32)  # (...,) log top-k mass
    shift = np.where(np.isfinite(target), target - lse, np.float32(0))
    return lp + shift[..., None].astype(np.float32)


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
    return {"sample_ids": ids, "sample_counts": c.astype(np.uint8), "sample_tail_count": counts[..., -1].astype(np.uint8)}


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
