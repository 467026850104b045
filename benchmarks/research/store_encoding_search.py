"""The search behind the store encoding: candidate encodings, entropy bounds, the older format.

A research script, not a benchmark of what ships (that is benchmarks/store_bench.py, whose
helpers it reuses). On the same fp32 SmolLM2 rows, every candidate encoding (fp32, fp16, bf16,
format v2's raw ids + qdelta 1/64 or 1/128 + fp32 tail, per-chunk and store-wide id tables, the
next-token slot implicit, format v3 before and now, slot-major layouts) is re-encoded in memory
into real Zarr arrays on disk under several codecs. Every candidate holds every array of a store
(ids, logprobs, tail, targets, input ids…), so bytes/token is the whole store's, chunked as the
writer chunks. ``id_bounds`` says how far any per-symbol coder of the ids can go; ``read`` times
the shipped store against a format version 2 store of the same rows.

    python -m benchmarks.research.store_encoding_search [--examples 424] [--seq-len 256] [--top-k 64]
    python -m benchmarks.research.store_encoding_search --store EXISTING_FP32_STORE
    python -m benchmarks.research.store_encoding_search --read STORE [STORE…]   # only read rates

``--read`` imports nothing of kdstream but ``open_store``, so it also times an older kdstream's
reader (PYTHONPATH=that checkout's src) on the same stores.

Saves benchmarks/research/results/store_encoding_search.json.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.results import RESEARCH_RESULTS, save
from benchmarks.store_bench import dir_bytes, errors, fp32_rows, parser, read_rates, shipped

SLOT_MAJOR = "slot-major"  # a candidate's arrays stored slot-major (write_arrays)


def codecs(kind: str):
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    from kdstream.storage.writer import BLOSC_BLOCK

    name, _, level = kind.partition(":")  # e.g. "blosc-bitshuffle:6", or ":6/1MiB": the writer's 1 MiB blosc blocks
    level, _, block = level.partition("/")
    if name == "zstd":
        return [ZstdCodec(level=int(level)), Crc32cCodec()]
    shuffle = {"blosc-shuffle": "shuffle", "blosc-bitshuffle": "bitshuffle"}[name]
    return [BloscCodec(cname="zstd", clevel=int(level), shuffle=shuffle, blocksize=BLOSC_BLOCK if block == "1MiB" else 0),
            Crc32cCodec()]


def write_arrays(root: Path, arrays: dict[str, np.ndarray], kind: str, chunk_rows: int,
                 attrs: dict | None = None) -> dict[str, int]:
    """Each array as a Zarr v3 array chunked along axis 0 (``id_table``: one row per chunk, as the
    store does); bytes on disk of each array. The names listed under the key ``SLOT_MAJOR`` are
    (S, L-1, k) arrays stored slot-major within each chunk (Zarr's transpose codec, in the writer's order)."""
    import zarr
    from zarr.codecs import TransposeCodec

    from kdstream.storage.writer import SLOT_MAJOR_ORDER

    arrays = dict(arrays)
    slot_major = arrays.pop(SLOT_MAJOR, ())
    g = zarr.open_group(str(root), mode="w", zarr_format=3, attributes=attrs or {})
    for name, value in arrays.items():
        value = np.ascontiguousarray(value)
        rows = 1 if name.endswith("id_table") else min(chunk_rows, len(value))
        filters = [TransposeCodec(order=SLOT_MAJOR_ORDER)] if name in slot_major else None
        g.create_array(name, shape=value.shape, chunks=(rows, *value.shape[1:]), filters=filters,
                       dtype=value.dtype, compressors=codecs(kind), fill_value=0)[:] = value
    return {name: dir_bytes(root / name) for name in arrays}


def chunk_tables(ids: np.ndarray, vocab: int, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, L-1, k) ids → per-chunk indices (S, L-1, k) and tables (C, V), as the writer builds them."""
    from kdstream.storage import id_table

    parts = [id_table.build(ids[c : c + chunk_rows], vocab, np.dtype(np.uint16))
             for c in range(0, len(ids), chunk_rows)]
    return np.concatenate([p[0] for p in parts]), np.stack([p[1] for p in parts])


def candidates(r: dict[str, np.ndarray], vocab: int, chunk_rows: int):
    """name → (arrays to store, decoded (S, L-1, k) logprobs in rank order)."""
    from kdstream.storage import encoding as enc

    lp = r["topk_logprobs"].astype(np.float32)  # (S, L-1, k) exact
    ids16 = r["topk_ids"].astype(np.uint16)
    tail = enc.tail_mass(lp)  # (S, L-1)
    common = {"input_ids": r["input_ids"].astype(np.uint16), "example_id": r["example_id"],
              "doc_index": r["doc_index"], "target_rank": r["target_rank"].astype(np.uint16)}
    target32 = r["target_logprob"].astype(np.float32)
    out = {"ids u16 + logprobs fp32 (format v1)": ({**common, "topk_ids": ids16, "topk_logprobs": lp,
                                                    "target_logprob": target32}, lp)}
    f16 = lp.astype(np.float16)
    out["ids u16 + logprobs fp16"] = ({**common, "topk_ids": ids16, "topk_logprobs": f16, "target_logprob": target32},
                                      f16.astype(np.float32))
    bf = (lp.view(np.uint32) + 0x7FFF + ((lp.view(np.uint32) >> 16) & 1)) >> 16  # round to nearest even
    out["ids u16 + logprobs bf16"] = ({**common, "topk_ids": ids16, "topk_logprobs": bf.astype(np.uint16),
                                       "target_logprob": target32}, (bf.astype(np.uint32) << 16).view(np.float32))
    for scale in (1 / 64, 1 / 128):  # format v2: raw ids, codes renormalised to an fp32 tail on read
        d = enc.encode_topk(lp, scale)
        out[f"v2: ids u16 + qdelta 1/{round(1 / scale)} + fp32 tail, target"] = (
            {**common, "topk_ids": ids16, "topk_logprobs": d, "tail_mass": tail, "target_logprob": target32},
            enc.decode_topk(d, tail, scale))
    index, tables = chunk_tables(r["topk_ids"], vocab, chunk_rows)
    out["chunk id table + qdelta 1/128 + fp32 tail, target"] = (
        {**common, "topk_index": index, "id_table": tables, "topk_logprobs": enc.encode_topk(lp, 1 / 128),
         "tail_mass": tail, "target_logprob": target32}, enc.decode_topk(enc.encode_topk(lp, 1 / 128), tail, 1 / 128))
    # what the per-chunk tables are measured against: one table for the whole store (renumbered by
    # store-wide frequency: it needs a pass over the store before writing), and the slot of the true
    # next token coded implicitly ((id - input_ids[t+1]) mod 2^16 there: 0 when rank <= k)
    counts = np.bincount(r["topk_ids"].ravel(), minlength=vocab)
    by_freq = np.argsort(-counts, kind="stable")
    new_id = np.empty(vocab, np.int64)
    new_id[by_freq] = np.arange(vocab)
    v2q = {**common, "topk_logprobs": enc.encode_topk(lp, 1 / 128), "tail_mass": tail, "target_logprob": target32}
    v2dec = enc.decode_topk(v2q["topk_logprobs"], tail, 1 / 128)
    out["store-wide id table + qdelta 1/128 + fp32 tail, target"] = (
        {**v2q, "topk_ids": new_id[r["topk_ids"]].astype(np.uint16), "store_id_table": by_freq.astype(np.uint16)[None]},
        v2dec)
    slot = np.clip(r["target_rank"].astype(np.int64) - 1, 0, lp.shape[-1] - 1)[..., None]  # (S, L-1, 1)
    implicit = ids16.copy()
    at = np.take_along_axis(implicit, slot, -1)
    nxt = r["input_ids"][:, 1:, None].astype(np.uint16)
    np.put_along_axis(implicit, slot, np.where(r["target_rank"][..., None] <= lp.shape[-1], at - nxt, at), -1)
    out["v2 + next-token slot implicit"] = ({**v2q, "topk_ids": implicit}, v2dec)
    for steps in (64, 1024):  # format v3 as written before: 1/104 nat, the shift computed after rounding
        scale = 1 / 104
        d = enc.encode_topk(lp, scale)
        cum = enc.cumulative_codes(d)
        shift = enc.shift_codes(cum, tail, scale, scale / steps)
        shift = shift.astype(np.int8) if steps < 256 else shift  # |h| <= steps / 2
        out[f"v3 before: chunk id table + qdelta 1/104 + shift 1/{steps} after rounding + target code"] = (
            {**common, "topk_index": index, "id_table": tables, "topk_logprobs": d, "topk_shift": shift,
             "target_code": enc.encode_target(r["target_logprob"], cum, r["target_rank"], scale / enc.TARGET_STEPS)},
            enc.decode_shifted(cum, shift, scale, scale / steps))
    e = enc.encoding_attrs("qdelta")  # format v3 now: the shift chosen with the codes (encode_offset), 1/52 nat
    d, shift = enc.encode_offset(lp, tail, e["scale"])
    cum = enc.cumulative_codes(d)
    v3 = {**common, "topk_index": index, "id_table": tables, "topk_logprobs": d, "topk_shift": shift,
          "target_code": enc.encode_target(r["target_logprob"], cum, r["target_rank"], e["target_scale"])}
    v3dec = enc.decode_shifted(cum, shift, e["scale"], e["shift_scale"])
    out["v3: chunk id table + qdelta 1/52 + shift chosen with the codes + target code"] = (v3, v3dec)
    # the same arrays, the delta codes (or the indices too) slot-major: each slot's values together
    out["v3, delta codes slot-major"] = ({**v3, SLOT_MAJOR: ("topk_logprobs",)}, v3dec)
    out["v3, delta codes and indices slot-major"] = ({**v3, SLOT_MAJOR: ("topk_logprobs", "topk_index")}, v3dec)
    return out


def entropy_bits(values: np.ndarray) -> float:
    """Mean bits per value of coding each value alone at its empirical frequency."""
    _, counts = np.unique(values.ravel(), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def chunk_index_bits(index: np.ndarray) -> dict[str, float]:
    """Bits per id of one chunk's table indices (n, L-1, k), rank order, under order-0 models: the
    index alone; the index given its rank bucket (1, 2, 3-4, 5-8, …, 33-64: one table per bucket);
    exclusion (an id already in the row is not coded again); and the row as a set (a bit per table
    entry, each at its frequency in the chunk) plus its order, as a Lehmer code against the table's
    order (digit j: how many of the row's not yet placed ids have a smaller index), each digit
    position at its own frequency."""
    rows = index.reshape(-1, index.shape[-1]).astype(np.int64)  # (N, k)
    n, k = rows.shape
    counts = np.bincount(rows.ravel())
    edges = [0, 1, 2] + [2 ** i for i in range(2, int(np.log2(k)) + 1)]  # 0, 1, 2, 4, 8, …, k
    bucket = sum(entropy_bits(rows[:, a:b]) * (b - a) for a, b in zip(edges[:-1], edges[1:])) / k
    f = counts[rows].astype(np.float64)  # (N, k) each id's count in the chunk
    excl = float(np.mean(-np.log2(f / (counts.sum() - (np.cumsum(f, 1) - f)))))
    p = np.clip(counts[counts > 0] / n, 1e-12, 1 - 1e-12)  # share of rows holding each table entry
    set_bits = float(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)).sum() / k)
    lehmer = np.stack([(rows[:, j:] < rows[:, j : j + 1]).sum(1) for j in range(k)], 1)  # (N, k)
    order_bits = float(np.mean([entropy_bits(lehmer[:, j]) for j in range(k)]))
    return {"order0": entropy_bits(rows), "rank_buckets": bucket, "exclusion": excl, "set": set_bits,
            "lehmer_order": order_bits, "set_plus_order": set_bits + order_bits}


def id_bounds(r: dict[str, np.ndarray], vocab: int, chunk_rows: int, tokens: int) -> dict:
    """How many bytes/token the top-k ids and logprobs need under simple models, as floors for
    byte-wise coders. Ids: order 0 over the store (the frequency of each id); the per-chunk models
    of ``chunk_index_bits`` (what the chunk id table exploits, and three refinements of it); and an
    ideal arithmetic coder with a bigram model P(id | current token) fitted on the first 3/4 of the
    examples and scored on the rest (mixed with the unigram: lambda = n/(n + 16k)). Logprobs: the
    order-0 entropy of the stored delta codes, alone and given their slot j (one table per slot)."""
    from kdstream.storage import encoding as enc

    ids, k = r["topk_ids"].astype(np.int64), r["topk_ids"].shape[-1]
    per_id = tokens / ids.size  # bytes/token = bits/id * ids per token / 8
    index, _ = chunk_tables(r["topk_ids"], vocab, chunk_rows)
    per_chunk = [chunk_index_bits(index[c : c + chunk_rows]) for c in range(0, len(ids), chunk_rows)]
    chunk_bytes = {name: round(float(np.mean([b[name] for b in per_chunk])) / 8 / per_id, 2) for name in per_chunk[0]}
    cut = (3 * len(ids)) // 4
    ia, ib = ids[:cut].reshape(-1, k), ids[cut:].reshape(-1, k)
    w = r["input_ids"][:, :-1].astype(np.int64)  # (S, L-1) the current token of each row
    wa, wb = w[:cut].reshape(-1), w[cut:].reshape(-1)
    uni = np.bincount(ia.ravel(), minlength=vocab) + 0.01
    uni /= uni.sum()
    pairs, counts = np.unique(np.repeat(wa, k) * vocab + ia.ravel(), return_counts=True)
    key = np.repeat(wb, k) * vocab + ib.ravel()
    pos = np.minimum(np.searchsorted(pairs, key), len(pairs) - 1)
    c = np.where(pairs[pos] == key, counts[pos], 0)
    n = (np.bincount(wa, minlength=vocab) * k)[np.repeat(wb, k)]
    lam = n / (n + 16 * k)
    p = lam * c / np.maximum(n, 1) + (1 - lam) * uni[ib.ravel()]
    lp = r["topk_logprobs"].astype(np.float32)
    d, _ = enc.encode_offset(lp, enc.tail_mass(lp), enc.QDELTA_SCALE)  # (S, L-1, k) the delta codes as stored
    by_slot = np.mean([entropy_bits(d[..., j]) for j in range(k)])
    return {"qdelta_codes_order0_bytes_per_token": round(entropy_bits(d) * d.size / 8 / tokens, 2),
            "qdelta_codes_by_slot_bytes_per_token": round(by_slot * d.size / 8 / tokens, 2),
            "order0_store_bits_per_id": round(entropy_bits(ids), 3),
            "order0_store_bytes_per_token": round(entropy_bits(ids) / 8 / per_id, 2),
            "order0_per_chunk_bytes_per_token": chunk_bytes["order0"],
            "per_chunk_models_bytes_per_token": chunk_bytes,
            "bigram_heldout_bits_per_id": round(float(-np.log2(p).mean()), 3),
            "bigram_heldout_bytes_per_token": round(float(-np.log2(p).mean()) / 8 / per_id, 2)}


def v2_store(root: Path, r: dict[str, np.ndarray], vocab: int, chunk_rows: int) -> Path:
    """The same rows as a format version 2 store (raw uint16 ids, qdelta 1/128, fp32 tail and
    target, blosc zstd 5), the layout the writer wrote before version 3: read-speed reference."""
    from kdstream.storage import encoding as enc

    S, L = r["input_ids"].shape
    lp = r["topk_logprobs"]
    arrays = {"input_ids": r["input_ids"].astype(np.uint16), "example_id": r["example_id"], "doc_index": r["doc_index"],
              "topk_ids": r["topk_ids"].astype(np.uint16), "topk_logprobs": enc.encode_topk(lp, 1 / 128),
              "tail_mass": enc.tail_mass(lp), "target_logprob": r["target_logprob"].astype(np.float32),
              "target_rank": r["target_rank"].astype(np.uint16)}
    attrs = {"format": "kdstream-logits", "format_version": 2, "num_examples": S, "seq_len": L, "k": lp.shape[-1],
             "vocab_size": vocab, "chunk_rows": chunk_rows, "complete": True, "targets": "topk",
             "encoding": {"topk_logprobs": "qdelta", "scale": 1 / 128, "max_abs_error": 1 / 128}}
    write_arrays(root, arrays, "blosc-shuffle:5", chunk_rows, attrs)
    return root


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--read", nargs="+", default=None, help="only time reading these stores (local and HTTP)")
    args = ap.parse_args()
    if args.read:
        save("store_encoding_search-read", read_rates({p: Path(p) for p in args.read}), RESEARCH_RESULTS)
        return

    from kdstream.storage import open_store
    from kdstream.storage.schema import default_chunk_rows

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, r, teacher_s = fp32_rows(args, tmp)
        S, L = r["input_ids"].shape
        k, V, tokens = r["topk_ids"].shape[-1], open_store(str(src)).vocab_size, S * L
        exact = r["topk_logprobs"]
        chunk_rows = default_chunk_rows(L, k, V, S)
        results = []
        for name, (arrays, decoded) in candidates(r, V, chunk_rows).items():
            err = errors(decoded, exact)
            kinds = ("zstd:3", "blosc-shuffle:5") if name.startswith("ids u16 + logprobs") else \
                ("zstd:3", "blosc-shuffle:5", "blosc-shuffle:6", "blosc-shuffle:7", "blosc-bitshuffle:6") + \
                (("blosc-bitshuffle:6/1MiB",) if name.startswith("v3") else ())
            for kind in kinds:
                t = time.perf_counter()
                sizes = write_arrays(tmp / "cand.zarr", arrays, kind, chunk_rows)
                results.append({"encoding": name, "codecs": kind, "bytes_per_token": round(sum(sizes.values()) / tokens, 2),
                                "ids_bytes_per_token": round(sum(sizes.get(n, 0) for n in (
                                    "topk_ids", "topk_index", "id_table", "store_id_table")) / tokens, 2),
                                "logprobs_bytes_per_token": round(sizes["topk_logprobs"] / tokens, 2),
                                "write_tokens_per_s": round(tokens / (time.perf_counter() - t)), **err})
        chosen = shipped(r, V, tmp / "chosen.zarr")
        rates = read_rates({"v3": tmp / "chosen.zarr", "v2": v2_store(tmp / "v2.zarr", r, V, chunk_rows)})
        save("store_encoding_search", {
            "teacher": "SmolLM2-135M-Instruct", "corpus": "demo", "examples": S, "seq_len": L, "k": k,
            "vocab_size": V, "tokens": tokens, "teacher_seconds": teacher_s,
            "fp32_store_bytes_per_token": round(dir_bytes(src) / tokens, 2),
            "entries_p_ge_1e-4": float((exact >= np.log(1e-4)).mean()),
            "targets": {"bytes_per_token": 96, "max_err_p_ge_1e-4": 0.01, "read_tokens_per_s": 1_000_000},
            "id_bounds": id_bounds(r, V, chunk_rows, tokens),
            "chosen": chosen, "read": rates,
            "candidates": sorted(results, key=lambda x: x["bytes_per_token"]),
        }, RESEARCH_RESULTS)


if __name__ == "__main__":
    main()
