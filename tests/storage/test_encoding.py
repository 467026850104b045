"""qdelta: every decoded logprob within the stated bound, top-k + tail a distribution, edge rows."""
import numpy as np

from kdstream.storage import encoding as enc


def softmax_topk(logits: np.ndarray, k: int) -> np.ndarray:
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))  # (..., V) log_softmax
    return -np.sort(-logp, -1)[..., :k]  # (..., k) descending


def test_decoded_within_the_bound_for_flat_and_peaked_rows():
    rng = np.random.default_rng(0)
    # (3 sharpness levels, 200 rows, V = 1000): top-k mass from ~2% to ~100%
    logits = rng.normal(size=(3, 200, 1000)) * np.array([0.5, 3.0, 12.0])[:, None, None]
    lp = softmax_topk(logits, 16).astype(np.float32)
    tail = enc.tail_mass(lp)
    assert tail.min() < 1e-3 and tail.max() > 0.9  # both extremes are exercised
    scale = enc.QDELTA_SCALE
    dec = enc.decode_topk(enc.encode_topk(lp, scale), tail, scale)
    assert np.abs(dec - lp).max() <= enc.encoding_attrs("qdelta")["max_abs_error"] + 1e-5
    np.testing.assert_allclose(np.exp(dec.astype(np.float64)).sum(-1) + tail, 1.0, atol=1e-5)
    assert np.all(np.diff(dec, axis=-1) <= 0)


def test_edge_rows_stay_finite():
    lp = np.array([[0.0, -np.inf, -np.inf], [-1e-9, -30.0, -2000.0]], np.float32)  # all mass on one; a clamped code
    tail = enc.tail_mass(lp)
    d = enc.encode_topk(lp, enc.QDELTA_SCALE)
    assert d.dtype == np.uint16
    dec = enc.decode_topk(d, tail, enc.QDELTA_SCALE)
    assert np.isfinite(dec).all()
    assert abs(dec[0, 0]) < 1e-6 and abs(dec[1, 1] + 30.0) <= enc.QDELTA_SCALE
    assert dec[1, 2] <= -500  # below the grid's floor (-65535/128 nats): clamped there
