"""Sampled targets: unique drawn ids + counts, read back as a top-k view a KD loss can use."""
import numpy as np
import pytest

from kdstream.analysis.reference_kl import reference_kl
from kdstream.errors import KdError
from kdstream.storage import StoreWriter, encoding, open_store
from kdstream.storage.stats import store_stats
from kdstream.storage.verify import verify_store

L, K, V, N = 12, 8, 300, 16


def teacher(n, seed=0):
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.normal(size=(n, L - 1, V))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # (n, L-1, V)
    top = np.argsort(-logp, -1)[..., :K]
    return top, np.take_along_axis(logp, top, -1)  # (n, L-1, K) each


def test_draws_are_unbiased_for_the_top_k_and_the_tail():
    ids, lp = teacher(400)  # 4,400 positions
    d = encoding.draw_samples(ids, lp, N, K, np.random.default_rng(1))
    counts = d["sample_counts"].astype(int)
    assert np.all(counts.sum(-1) + d["sample_tail_count"] == N)
    # per top-k rank: mean estimate count/N equals the mean probability (within 4 standard errors)
    match = (d["sample_ids"][..., :, None] == ids[..., None, :]) & (counts > 0)[..., :, None]  # (.., slot, rank)
    assert np.all(match.sum(-1) == (counts > 0))  # every drawn id is one of the top-k
    est = (match * counts[..., :, None]).sum(-2) / N  # (..., K) count/N per top-k rank
    p = np.exp(lp)
    se = np.sqrt(p * (1 - p) / N).mean((0, 1)) / np.sqrt(p.shape[0] * p.shape[1])
    assert np.all(np.abs(est.mean((0, 1)) - p.mean((0, 1))) < 4 * se + 1e-9)
    tail = 1 - p.sum(-1)
    assert abs(d["sample_tail_count"].mean() / N - tail.mean()) < 4 * np.sqrt(tail.mean() / N / tail.size)


def test_a_sampled_store_reads_as_a_top_k_distribution(tmp_path):
    n = 6
    ids, lp = teacher(n, seed=2)
    rng = np.random.default_rng(0)
    given = {"input_ids": rng.integers(0, V, (n, L)), "example_id": np.arange(n), "doc_index": np.zeros(n, int),
             "target_logprob": lp[..., 0], "target_rank": np.ones((n, L - 1), int), "topk_ids": ids,
             "topk_logprobs": lp}
    w = StoreWriter(str(tmp_path / "s.zarr"), num_examples=n, seq_len=L, k=K, vocab_size=V,
                    attrs={"targets": "sampled"}, encoding="sampled", samples=N, sample_seed=3, chunk_rows=4)
    w.append(given)  # the teacher's top-k as produced: the writer draws
    w.finalize()
    # each example draws from its own generator: the same draws whatever the chunking
    rows = encoding.draw_samples_by_example(ids, lp, N, K, 3, given["example_id"])
    store = open_store(str(tmp_path / "s.zarr"))
    got = store[0:n]
    drawn = rows["sample_counts"] > 0
    np.testing.assert_array_equal(got["topk_ids"][drawn], rows["sample_ids"][drawn])
    np.testing.assert_allclose(np.exp(got["topk_logprobs"][drawn]), rows["sample_counts"][drawn] / N, rtol=1e-6)
    assert np.all(np.isneginf(got["topk_logprobs"][~drawn]))
    # padding ids are distinct from each other and from the drawn ids of their row
    flat = got["topk_ids"].reshape(-1, K)
    assert all(len(set(r)) == K for r in flat.tolist())
    np.testing.assert_allclose(np.exp(got["topk_logprobs"].astype(np.float64)).sum(-1) + got["tail_mass"], 1.0,
                               atol=1e-6)
    np.testing.assert_array_equal(got["tail_mass"] * N, rows["sample_tail_count"])
    assert verify_store(str(tmp_path / "s.zarr")).ok
    s = store_stats(str(tmp_path / "s.zarr"))
    assert s["logprob_encoding"] == "sampled" and s["logprob_max_abs_error"] is None
    assert s["topk_mass_mean"] == pytest.approx(1 - rows["sample_tail_count"].mean() / N, abs=1e-6)
    with pytest.raises(KdError, match="sampled targets"):
        reference_kl(str(tmp_path / "s.zarr"), str(tmp_path))
