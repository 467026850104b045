"""Ragged stores (selection.py, format version 6; 5 still read): rows keep a prefix of their top-k, padded on read.

Real stores written by StoreWriter from a synthetic teacher whose exact values are known; the
end-to-end precompute runs are in tests/precompute/test_ragged_precompute.py.
"""
import numpy as np
import pytest
import torch
import zarr

from benchmarks.fixtures import topk_rows
from kdstream.distill.losses import kd_loss
from kdstream.storage import StoreWriter, open_store
from kdstream.storage import selection as sel
from kdstream.storage.finalize import finalize_store
from kdstream.storage.stats import store_stats
from kdstream.storage.verify import verify_store

S, L, K, V = 12, 17, 8, 300
R = 4  # chunk rows: 3 chunks


def synthetic(seed=0):
    """Teachers from very sure to unsure (so row lengths vary), true tokens inside and outside the top-k."""
    sharp = np.random.default_rng(seed).choice([0.5, 2.0, 6.0], size=(S, L - 1, 1))
    return topk_rows(S, L, K, V, seed=seed, sharpness=sharp, argmax_share=0.5)


def write(path, rows, selection=None, encoding="qdelta"):
    w = StoreWriter(str(path), num_examples=S, seq_len=L, k=K, vocab_size=V, attrs={"targets": "topk"},
                    chunk_rows=R, encoding=encoding, selection=selection)
    w.append(rows)
    w.finalize()
    return open_store(str(path))


@pytest.fixture(scope="module")
def rows():
    return synthetic()


@pytest.mark.parametrize("encoding", ["qdelta", "fp32"])
def test_full_length_ragged_store_reads_as_the_fixed_one(tmp_path, rows, encoding):
    """Every row at full length (--min-k = --top-k): the same decoded values, and every array the
    fixed store has holds the same chunk bytes (the ragged layout adds topk_len, and packs each chunk's
    entries in the order the fixed store stores them: with no padding, nothing moves). Only
    topk_logprobs' zarr.json differs for qdelta: the packed chunk is already slot-major, no transpose codec."""
    fixed = write(tmp_path / "fixed.zarr", rows, encoding=encoding)
    full = write(tmp_path / "full.zarr", rows, sel.describe("top_p", K, min_k=K, p=0.5), encoding)
    assert fixed.format_version == 4 and "selection" not in fixed.attrs
    assert full.format_version == 6 and full.attrs["selection"]["kind"] == "top_p"
    a, b = fixed[:], full[:]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for name in fixed._arrays:
        root = tmp_path / "fixed.zarr" / name
        chunks = [p.relative_to(root) for p in sorted(root.rglob("*")) if p.is_file() and p.name != "zarr.json"]
        assert chunks
        for chunk in chunks:
            assert (root / chunk).read_bytes() == (tmp_path / "full.zarr" / name / chunk).read_bytes(), (name, chunk)
    assert (full.read(0, S, ("topk_len",))["topk_len"] == K).all()


@pytest.mark.parametrize("encoding", ["qdelta", "fp32"])
def test_top_p_rows_are_the_smallest_prefix_reaching_p(tmp_path, rows, encoding):
    p, min_k = 0.8, 2
    store = write(tmp_path / "p.zarr", rows, sel.describe("top_p", K, min_k=min_k, p=p), encoding)
    got = store.read(0, S, ("topk_ids", "topk_logprobs", "tail_mass", "target_logprob", "topk_len"))
    n = got["topk_len"]
    assert n.min() >= min_k and n.max() <= K and len(np.unique(n)) > 3  # really ragged
    exact = np.exp(rows["topk_logprobs"].astype(np.float64))  # (S, L-1, K) the teacher's
    mass = np.cumsum(exact, -1)
    kept = np.take_along_axis(mass, n[..., None] - 1, -1)[..., 0]
    assert ((kept >= p) | (n == K)).all()  # reaches p unless at the cap
    before = np.take_along_axis(mass, np.maximum(n - 2, 0)[..., None], -1)[..., 0]
    assert ((before < p) | (n == min_k)).all()  # one entry fewer would not
    pad = sel.pad_mask(n, K)
    assert np.isneginf(got["topk_logprobs"][pad]).all() and (got["topk_ids"][pad] == 0).all()
    assert np.isfinite(got["topk_logprobs"][~pad]).all()
    np.testing.assert_array_equal(got["topk_ids"][~pad], rows["topk_ids"][~pad])
    err = store.encoding["max_abs_error"]
    assert np.abs(got["topk_logprobs"][~pad] - rows["topk_logprobs"][~pad]).max() <= err + 1e-6
    # the tail is what the kept entries leave; targets beyond a row's length decode as well
    np.testing.assert_allclose(got["tail_mass"], 1 - kept, atol=1e-4)
    assert (rows["target_rank"] > n).any() and (rows["target_rank"] <= n).any()
    np.testing.assert_allclose(got["target_logprob"], rows["target_logprob"],
                               atol=store.encoding["target_max_abs_error"] + 1e-6)
    assert verify_store(str(tmp_path / "p.zarr")).ok


def test_budget_keeps_the_largest_probabilities_of_each_chunk(tmp_path, rows):
    budget, min_k = 3, 1
    store = write(tmp_path / "b.zarr", rows, sel.describe("budget", K, min_k=min_k, budget=budget), "fp32")
    got = store.read(0, S, ("topk_logprobs", "topk_len"))
    n = got["topk_len"]
    exact = rows["topk_logprobs"]
    for c in range(S // R):
        rc = slice(c * R, (c + 1) * R)
        nc, lp = n[rc].ravel(), exact[rc].reshape(-1, K)  # (P,), (P, K)
        assert nc.sum() == budget * len(nc)  # continuous values: no ties at the threshold
        pad = sel.pad_mask(nc, K)
        # the rows free to grow or shrink: none keeps an entry smaller than one dropped elsewhere
        free_kept = np.where(~pad & (nc > min_k)[:, None], lp, np.inf).min()
        free_dropped = np.where(pad & (nc < K)[:, None], lp, -np.inf).max()
        assert free_kept >= free_dropped
        np.testing.assert_array_equal(got["topk_logprobs"][rc].reshape(-1, K)[~pad], lp[~pad])
    assert len(np.unique(n)) > 2


def test_budget_ties_at_the_threshold_are_kept():
    lp = np.log(np.array([[0.5, 0.2, 0.2, 0.1], [0.6, 0.2, 0.1, 0.1]]))  # (2, 4): 0.2 three times
    n = sel.budget_lengths(lp, 2, min_k=1)  # 4 entries: 0.6, 0.5, then one of three 0.2s
    assert n.tolist() == [3, 2] and n.sum() == 5  # all the tied entries kept: one more


def test_stats_and_plain_zarr_reading(tmp_path, rows):
    store = write(tmp_path / "p.zarr", rows, sel.describe("top_p", K, p=0.7))
    n = store.read(0, S, ("topk_len",))["topk_len"]
    s = store_stats(str(tmp_path / "p.zarr"))
    assert s["entries_mean"] == pytest.approx(n.mean())
    assert s["entries_p10"] == np.quantile(n, 0.1, method="inverted_cdf")
    assert s["entries_p90"] == np.quantile(n, 0.9, method="inverted_cdf")
    assert s["selection"]["kind"] == "top_p"
    decoded = store[:]
    assert s["topk_mass_mean"] == pytest.approx(np.exp(decoded["topk_logprobs"].astype(np.float64)).sum(-1).mean())
    assert s["target_in_topk"] == pytest.approx((rows["target_rank"] <= n).mean())
    fixed = store_stats(str(write(tmp_path / "f.zarr", rows).url))
    assert fixed["entries_mean"] == fixed["entries_p10"] == fixed["entries_p90"] == K

    # docs/store-format.md, ragged rows: the chunk unpacked and the lengths applied with plain zarr + numpy
    g = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    e, k = g.attrs["encoding"], g.attrs["k"]
    assert g.attrs["format_version"] == 6
    for c in range(S // R):
        rows_c = slice(c * R, (c + 1) * R)
        n_c = g["topk_len"][rows_c].astype(np.int64)                                      # (B, L-1)
        keep = np.arange(k) < n_c[..., None]                                              # (B, L-1, k)
        m = int(keep.sum())
        index = np.zeros(keep.shape, np.int64)
        index[keep] = g["topk_index"][rows_c].ravel()[:m]                                 # row by row
        deltas = np.zeros(keep.shape, np.int64)
        deltas.transpose(2, 0, 1)[keep.transpose(2, 0, 1)] = g["topk_logprobs"][rows_c].ravel()[:m]  # slot by slot
        pad = ~keep
        ids = np.where(pad, 0, g["id_table"][c].astype(np.int64)[index])
        codes = np.cumsum(deltas, -1, dtype=np.int64)
        lp = -codes * e["scale"] + g["topk_shift"][rows_c][..., None] * e["shift_scale"]
        lp = np.where(pad, -np.inf, lp)
        rank = g["target_rank"][rows_c].astype(np.int64)
        ref = np.take_along_axis(codes, np.clip(np.minimum(rank, n_c) - 1, 0, k - 1)[..., None], -1)[..., 0]
        target = -(g["target_code"][rows_c] + 512 * ref) * e["target_scale"]
        np.testing.assert_array_equal(ids, decoded["topk_ids"][rows_c])
        np.testing.assert_allclose(lp, decoded["topk_logprobs"][rows_c], atol=1e-5)
        np.testing.assert_allclose(target, decoded["target_logprob"][rows_c], atol=1e-5)


@pytest.mark.parametrize("kind,temperature", [("forward_kl", 1.0), ("forward_kl", 2.0), ("reverse_kl", 1.0),
                                              ("jsd", 2.0)])
def test_bucket_loss_on_padded_rows_equals_the_loss_on_their_listed_entries(kind, temperature):
    """-inf = not listed: a padded row (id 0 at the padding, listed elsewhere in the row or not)
    has the loss of its listed entries alone, the tail being 1 - their mass (student and teacher)."""
    g = torch.Generator().manual_seed(0)
    v, k = 50, 6
    student = torch.randn(5, v, generator=g) * 3
    student[4, 7] = 12.0  # a row whose listed ids hold > 0.99 of the student's mass (exact tail path)
    teacher = torch.log_softmax(torch.randn(5, v, generator=g) * 3, -1)
    teacher[4] = torch.log_softmax(torch.where(torch.arange(v) == 7, 12.0, 0.0), -1)
    top = teacher.topk(k, -1)
    ids, lp = top.indices.clone(), top.values.clone()
    ids[1, 2] = 0  # id 0 listed, and padding (id 0) after it
    lengths = [3, 4, 6, 1, 2]
    per_row = []
    for i, n in enumerate(lengths):
        per_row.append(kd_loss(student[i : i + 1], ids[i : i + 1, :n], lp[i : i + 1, :n], kind=kind,
                               temperature=temperature, tail="bucket"))
        ids[i, n:], lp[i, n:] = 0, float("-inf")
    padded = kd_loss(student, ids, lp, kind=kind, temperature=temperature, tail="bucket")
    torch.testing.assert_close(padded, torch.stack(per_row).mean(), rtol=1e-5, atol=1e-6)

    s = student.clone().requires_grad_(True)
    kd_loss(s, ids, lp, kind=kind, temperature=temperature, tail="bucket").backward()
    assert torch.isfinite(s.grad).all()


def test_a_union_refuses_stores_of_another_row_rule(tmp_path, rows):
    """Fixed top-k and budgeted rows, or two budgets, are different kinds of row: one union holds one."""
    from kdstream.errors import KdError
    from kdstream.storage import open_stores

    write(tmp_path / "fixed.zarr", rows)
    write(tmp_path / "b4.zarr", rows, selection=sel.describe("budget", K, budget=4))
    # other rows: two writes of the same rows in the same second are one store (same identity)
    write(tmp_path / "b4bis.zarr", synthetic(seed=1), selection=sel.describe("budget", K, budget=4))
    write(tmp_path / "b6.zarr", rows, selection=sel.describe("budget", K, budget=6))
    assert len(open_stores([str(tmp_path / "b4.zarr"), str(tmp_path / "b4bis.zarr")])) == 2 * S
    for a, b, named in (("fixed", "b4", "selection"), ("b4", "b6", "selection.budget")):
        with pytest.raises(KdError) as exc:
            open_stores([str(tmp_path / f"{a}.zarr"), str(tmp_path / f"{b}.zarr")])
        assert f"differ in {named} " in str(exc.value) and "--budget" in str(exc.value)


def as_version_5(path, chunk_rows):
    """Make an unfinalized ragged store written now into a format version 5 one (rows padded to k,
    qdelta codes through the transpose codec), as the writer before packing left it; then finalize."""
    from kdstream.storage import packing
    from kdstream.storage.writer import _codecs

    g = zarr.open_group(str(path), mode="r+")
    logprobs = g.attrs["encoding"]["topk_logprobs"]
    lengths = g["topk_len"][:].astype(np.int64)
    for name in packing.PACKED:
        old = g[name]
        data = old[:]
        fill = -np.inf if data.dtype.kind == "f" else 0  # version 5: fp32 -inf, codes and indices 0 at the padding
        padded = packing.unpack_chunks(data, lengths, chunk_rows, packing.slot_major(name, logprobs), fill)
        shape, chunks, dtype = old.shape, old.chunks, old.dtype
        del g[name]
        g.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **_codecs(name, logprobs))
        g[name].with_config({"write_empty_chunks": True})[:] = padded
    g.attrs["format_version"] = 5
    finalize_store(str(path))


@pytest.mark.parametrize("encoding", ["qdelta", "fp32"])
def test_a_version_5_store_with_padded_rows_still_reads(tmp_path, rows, encoding):
    selection = sel.describe("budget", K, budget=3.5)
    new = write(tmp_path / "new.zarr", rows, selection, encoding)
    w = StoreWriter(str(tmp_path / "old.zarr"), num_examples=S, seq_len=L, k=K, vocab_size=V,
                    attrs={"targets": "topk"}, chunk_rows=R, encoding=encoding, selection=selection)
    w.append(rows)
    as_version_5(tmp_path / "old.zarr", R)
    old = open_store(str(tmp_path / "old.zarr"))
    assert old.format_version == 5 and not old.packed and new.format_version == 6 and new.packed
    assert verify_store(str(tmp_path / "old.zarr")).ok and verify_store(str(tmp_path / "new.zarr")).ok
    keys = ("topk_ids", "topk_logprobs", "tail_mass", "target_logprob", "target_rank", "topk_len")
    for a, b in ((0, S), (1, 6), (5, 5 + 1)):  # whole store, across chunks, one row inside a chunk
        got, want = old.read(a, b, keys), new.read(a, b, keys)
        for key in keys:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def realistic(seed=0, s=16, length=129, k=32, v=4096):
    """A teacher like a real LM's: Zipf-like token frequencies shared by all positions, each position
    sure or unsure (sharpness drawn per position), so rows of a budget store range from 1 to k."""
    rng = np.random.default_rng(seed)
    prior = -1.2 * np.log1p(np.arange(v))  # (V,)
    sharp = rng.gamma(2.0, 1.0, size=(s, length - 1, 1))
    logits = prior + sharp * rng.gumbel(size=(s, length - 1, v))  # (S, L-1, V)
    logp = logits - np.logaddexp.reduce(logits, -1, keepdims=True)
    top = np.argsort(-logp, -1)[..., :k]
    ids = rng.integers(0, v, size=(s, length))
    target = np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    return {"input_ids": ids, "example_id": np.arange(s), "doc_index": np.zeros(s, dtype=np.int64),
            "topk_ids": top, "topk_logprobs": np.take_along_axis(logp, top, -1).astype(np.float32),
            "target_logprob": target.astype(np.float32), "target_rank": 1 + (logp > target[..., None]).sum(-1)}


def test_packed_ragged_rows_cost_no_more_per_entry_than_fixed_rows(tmp_path):
    """Bytes of the entries (topk_index, topk_logprobs, id_table chunk objects) per stored entry: a
    budget store (version 6, packed) at most a fixed top-k store's with the same mean entries
    (0.88x here; 0.99-1.02x on SmolLM2 at cap 64, docs/benchmarks.md, ragged stores), while the
    padded layout of version 5 costs more than 10% more than the packed one (1.31x here,
    1.05-1.6x on SmolLM2)."""
    s, length, k, v, r, budget = 16, 129, 32, 4096, 8, 16
    rows = realistic(s=s, length=length, k=k, v=v)

    def entry_bytes(path):
        return sum(f.stat().st_size for n in ("topk_index", "topk_logprobs", "id_table")
                   for f in (path / n).rglob("*") if f.is_file() and f.name != "zarr.json")

    def writer(path, width, selection=None):
        return StoreWriter(str(path), num_examples=s, seq_len=length, k=width, vocab_size=v, attrs={"targets": "topk"},
                           chunk_rows=r, selection=selection)

    fixed = writer(tmp_path / "fixed.zarr", budget)
    fixed.append({**rows, "topk_ids": rows["topk_ids"][..., :budget], "topk_logprobs": rows["topk_logprobs"][..., :budget]})
    fixed.finalize()
    per_fixed = entry_bytes(tmp_path / "fixed.zarr") / (s * (length - 1) * budget)
    selection = sel.describe("budget", k, budget=budget)
    for name in ("packed.zarr", "padded.zarr"):
        w = writer(tmp_path / name, k, selection)
        w.append(rows)
    finalize_store(str(tmp_path / "packed.zarr"))
    as_version_5(tmp_path / "padded.zarr", r)
    n = open_store(str(tmp_path / "packed.zarr")).read(0, s, ("topk_len",))["topk_len"]
    assert n.min() == 1 and n.max() == k and n.sum() == budget * s * (length - 1)  # really ragged
    per_packed = entry_bytes(tmp_path / "packed.zarr") / n.sum()
    per_padded = entry_bytes(tmp_path / "padded.zarr") / n.sum()
    assert per_packed <= 1.0 * per_fixed, (per_packed, per_fixed)
    assert per_padded > 1.1 * per_packed, (per_padded, per_packed)


@pytest.mark.parametrize("encoding", ["qdelta", "fp32"])
def test_a_few_rows_of_a_packed_chunk_read_as_the_whole_chunk_sliced(tmp_path, rows, encoding):
    """A loader's batch is a few rows of a chunk: the reader unpacks only those rows
    (packing.unpack_rows: row-major offsets for ids and fp32, slot ranks for qdelta codes); every
    range, inside one chunk or across chunks, equals the same rows of a whole-store read."""
    store = write(tmp_path / "budget.zarr", rows, sel.describe("budget", K, budget=3.0), encoding)
    lengths = store.read(0, S, ("topk_len",))["topk_len"]
    assert len(np.unique(lengths)) > 2  # ragged indeed
    whole = store[:]
    for start, stop in [(0, 1), (1, 3), (3, 4), (2, 7), (5, 6), (1, 11), (8, 12), (11, 12), (0, S)]:
        got = store.read(start, stop, tuple(whole))
        for key, value in whole.items():
            np.testing.assert_array_equal(got[key], value[start:stop], err_msg=f"{key} [{start}, {stop})")


def test_unpacking_to_absolute_codes_equals_unpacking_then_summing():
    """The reader sums a packed qdelta chunk's delta codes while it is still slot-major
    (packing.unpack(cumulative=True)): the same codes as unpacking and then summing per row,
    for a whole chunk and for a few of its rows."""
    from kdstream.storage import packing
    from kdstream.storage.encoding import cumulative_codes

    rng = np.random.default_rng(0)
    n, positions, k = 6, 5, 8
    lengths = rng.integers(1, k + 1, size=(n, positions))
    deltas = rng.integers(0, 50, size=(n, positions, k)).astype(np.uint16)
    deltas[packing.keep_mask(lengths, k) == 0] = 0  # a ragged row's padding: delta 0
    packed = packing.pack(deltas, lengths, by_slot=True)
    want = cumulative_codes(packing.unpack(packed, lengths, by_slot=True))
    assert np.array_equal(packing.unpack(packed, lengths, by_slot=True, cumulative=True), want)
    for s, e in ((0, n), (1, 3), (5, 6)):
        got = packing.unpack_rows(packed, lengths, s, e, by_slot=True, cumulative=True)
        assert np.array_equal(got, want[s:e])
    assert np.array_equal(packing.unpack(packed, lengths, by_slot=True), deltas)  # the plain path as before
