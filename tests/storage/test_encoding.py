"""qdelta: every decoded logprob within the stated bound, top-k + tail a distribution, edge rows;
the per-chunk id table round-trips."""
import numpy as np
import pytest

from kdstream.storage import encoding as enc
from kdstream.storage import id_table


def softmax_topk(logits: np.ndarray, k: int) -> np.ndarray:
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))  # (..., V) log_softmax
    return -np.sort(-logp, -1)[..., :k]  # (..., k) descending


def encode(lp, tail):
    """What the writer stores for version 3 qdelta, and what the reader decodes from it."""
    e = enc.encoding_attrs("qdelta")
    d, shift = enc.encode_offset(lp, tail, e["scale"])
    return e, d, shift, enc.decode_shifted(enc.cumulative_codes(d), shift, e["scale"], e["shift_scale"])


def test_decoded_within_the_bound_for_flat_and_peaked_rows():
    rng = np.random.default_rng(0)
    # (3 sharpness levels, 200 rows, V = 1000): top-k mass from ~2% to ~100%
    logits = rng.normal(size=(3, 200, 1000)) * np.array([0.5, 3.0, 12.0])[:, None, None]
    lp = softmax_topk(logits, 16).astype(np.float32)
    tail = enc.tail_mass(lp)
    assert tail.min() < 1e-3 and tail.max() > 0.9  # both extremes are exercised
    # logprobs on a 2^-10 grid put code steps exactly on the grid of the shift (ties), the rows
    # encode_offset cannot solve segment by segment and searches
    for x in (lp, (np.round(lp * 1024) / 1024).astype(np.float32)):
        tail_x = enc.tail_mass(x)
        e, d, shift, dec = encode(x, tail_x)
        assert e["max_abs_error"] < 0.01 and shift.dtype == np.int16 and 0 <= shift.min() <= shift.max() <= 1024
        assert np.abs(dec - x).max() <= e["max_abs_error"] + 1e-6
        # the decoded top-k mass is the teacher's to a factor exp(±shift_scale / 2)
        mass, true_mass = np.exp(dec.astype(np.float64)).sum(-1), 1 - tail_x.astype(np.float64)
        assert np.abs(mass / true_mass - 1).max() <= np.expm1(e["shift_scale"] / 2) + 1e-6
        assert np.all(np.diff(dec, axis=-1) <= 0)
    # version 2 (float32 tail, renormalised on read) still decodes within its bound
    v2 = enc.decode_topk(enc.encode_topk(lp, 1 / 128), tail, 1 / 128)
    assert np.abs(v2 - lp).max() <= 1 / 128 + 1e-5
    np.testing.assert_allclose(np.exp(v2.astype(np.float64)).sum(-1) + tail, 1.0, atol=1e-5)


def test_edge_rows_stay_finite():
    lp = np.array([[0.0, -np.inf, -np.inf], [-1e-9, -30.0, -2000.0]], np.float32)  # all mass on one; a clamped code
    tail = enc.tail_mass(lp)
    e, d, shift, dec = encode(lp, tail)
    assert d.dtype == np.uint16
    assert np.isfinite(dec).all()
    assert abs(dec[0, 0]) < 1e-4 and abs(dec[1, 1] + 30.0) <= e["max_abs_error"]
    assert dec[1, 2] <= -500  # below the grid's floor (-65535 * scale nats): clamped there


def test_target_codes_inside_and_outside_the_top_k():
    rng = np.random.default_rng(1)
    lp = softmax_topk(rng.normal(size=(50, 300)) * 3, 8).astype(np.float32)  # (50, 8)
    rank = rng.integers(1, 20, size=50)  # half the targets beyond k = 8
    target = np.where(rank <= 8, lp[np.arange(50), np.clip(rank - 1, 0, 7)], lp[:, -1] - rng.random(50) * 5)
    e, d, _, _ = encode(lp, enc.tail_mass(lp))
    cum = enc.cumulative_codes(d)
    code = enc.encode_target(target, cum, rank, e["target_scale"])
    # in the top-k, within half a step of its code, which the shift h (up to one step) moved
    assert code.dtype == np.int32 and (np.abs(code[rank <= 8]) <= 512 * 3 // 2).all()
    np.testing.assert_allclose(enc.decode_target(code, cum, rank, e["target_scale"]), target,
                               atol=e["target_max_abs_error"], rtol=0)


def test_id_table_round_trip_and_order():
    rng = np.random.default_rng(2)
    ids = rng.zipf(1.3, size=(4, 7, 5)) % 500  # (n, L-1, k) skewed, as top-k ids are
    index, table = id_table.build(ids, 500, np.dtype(np.uint16))
    assert index.dtype == table.dtype == np.uint16 and table.shape == (500,)
    np.testing.assert_array_equal(id_table.lookup(index, table[None]), ids)
    counts = np.bincount(ids.ravel(), minlength=500)
    used = np.count_nonzero(counts)
    assert (np.diff(counts[table[:used]]) <= 0).all() and (table[used:] == 0).all()  # most frequent first
    # rows of two chunks read together: each row uses its own chunk's table
    index2, table2 = id_table.build(ids[::-1] + 1, 500, np.dtype(np.uint16))
    both = id_table.lookup(np.concatenate([index, index2]), np.stack([table, table2]), np.repeat([0, 1], 4))
    np.testing.assert_array_equal(both, np.concatenate([ids, ids[::-1] + 1]))
    with pytest.raises(ValueError, match=r"\[0, 500\)"):
        id_table.build(ids + 500, 500, np.dtype(np.uint16))
