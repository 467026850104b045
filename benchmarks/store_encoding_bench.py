"""On-disk size and fidelity of candidate top-k store encodings, on real teacher output.

SmolLM2-135M-Instruct (benchmarks/smollm2.py) scores the demo corpus (packed with its tokenizer)
through the real ``precompute-logits`` CLI with exact fp32 logprobs (top-64 by default); the
arrays are read back and re-encoded in memory into real Zarr arrays on disk, one candidate at a
time. Every candidate holds every array of a store (ids, logprobs, tail, targets, input ids…),
so bytes/token is the whole store's. Error: the worst |decoded − fp32| logprob over the entries
with p >= 1e-4, and over all entries. The last entry, ``chosen``, is a store written by
kdstream's own StoreWriter (default encoding) and read back with ``open_store``.

    python benchmarks/store_encoding_bench.py [--examples 48] [--seq-len 256] [--top-k 64]
    python benchmarks/store_encoding_bench.py --store EXISTING_FP32_STORE   # skip the teacher pass

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

P_MIN = 1e-4  # the error target applies to entries with p >= 1e-4


def teacher_store(out: Path, examples: int, seq_len: int, top_k: int) -> Path:
    """Run the real precompute-logits CLI (vLLM, fp32 logprobs) into ``out``."""
    from smollm2 import smollm2_dir

    cmd = [sys.executable, "-m", "kdstream", "precompute-logits", "--model", str(smollm2_dir()),
           "--dataset", "demo", "--out", str(out), "--top-k", str(top_k), "--seq-len", str(seq_len),
           "--max-examples", str(examples), "--dtype", "float32", "--batch-size", "16",
           "--logprob-encoding", "fp32", "--overwrite"]
    env = {**os.environ, "TQDM_DISABLE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def dir_bytes(root: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(root) for f in names)


def codecs(kind: str):
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    name, _, level = kind.partition(":")
    if name == "zstd":
        return [ZstdCodec(level=int(level)), Crc32cCodec()]
    shuffle = {"blosc-shuffle": "shuffle", "blosc-bitshuffle": "bitshuffle"}[name]
    return [BloscCodec(cname="zstd", clevel=int(level), shuffle=shuffle), Crc32cCodec()]


def write_arrays(root: Path, arrays: dict[str, np.ndarray], kind: str, chunk_rows: int) -> int:
    """Each array as a Zarr v3 array chunked along examples (as the store does); bytes on disk."""
    import zarr

    g = zarr.open_group(str(root), mode="w", zarr_format=3)
    for name, value in arrays.items():
        value = np.ascontiguousarray(value)
        g.create_array(name, shape=value.shape, chunks=(min(chunk_rows, len(value)), *value.shape[1:]),
                       dtype=value.dtype, compressors=codecs(kind), fill_value=0)[:] = value
    return dir_bytes(root)


def q_codes(lp: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(-lp.astype(np.float64) / scale), 0, 65535).astype(np.int64)


def candidates(r: dict[str, np.ndarray], vocab: int):
    """name → (arrays to store, decoded (S, L-1, k) logprobs in the stored ids' original order)."""
    from kdstream.storage import encoding as enc

    lp = r["topk_logprobs"].astype(np.float32)  # (S, L-1, k) exact
    ids16 = r["topk_ids"].astype(np.uint16)
    tail = enc.tail_mass(lp)  # (S, L-1)
    common = {"input_ids": r["input_ids"].astype(np.uint16), "example_id": r["example_id"],
              "doc_index": r["doc_index"]}
    v1 = {**common, "topk_ids": ids16, "target_logprob": r["target_logprob"].astype(np.float32),
          "target_rank": r["target_rank"].astype(np.int32)}
    out = {"ids u16 + logprobs fp32 (format v1)": ({**v1, "topk_logprobs": lp}, lp)}
    f16 = lp.astype(np.float16)
    out["ids u16 + logprobs fp16"] = ({**v1, "topk_logprobs": f16}, f16.astype(np.float32))
    bf = (lp.view(np.uint32) + 0x7FFF + ((lp.view(np.uint32) >> 16) & 1)) >> 16  # round to nearest even
    out["ids u16 + logprobs bf16"] = ({**v1, "topk_logprobs": bf.astype(np.uint16)},
                                      (bf.astype(np.uint32) << 16).view(np.float32))
    v2 = {**common, "topk_ids": ids16, "tail_mass": tail, "target_rank": r["target_rank"].astype(np.uint16),
          "target_logprob": r["target_logprob"].astype(np.float32)}
    for scale in (1 / 64, 1 / 128):
        d = enc.encode_topk(lp, scale)
        dec = enc.decode_topk(d, tail, scale)
        out[f"qdelta 1/{round(1 / scale)} + tail (rank order)"] = (
            {**v2, "topk_logprobs": d}, dec)
    # ids sorted ascending per row, delta-coded; logprob codes (absolute) in the same order
    scale = 1 / 128
    order = np.argsort(r["topk_ids"], -1, kind="stable")
    sid = np.take_along_axis(r["topk_ids"].astype(np.int64), order, -1)
    c = np.take_along_axis(q_codes(lp, scale), order, -1)
    dec_sorted = (-c * scale).astype(np.float32)
    dec = np.empty_like(dec_sorted)
    np.put_along_axis(dec, order, dec_sorted, -1)  # back to rank order, to compare
    out["ids sorted+delta + q 1/128 (id order)"] = (
        {**v2, "topk_ids": np.diff(sid, axis=-1, prepend=0).astype(np.uint16), "topk_logprobs": c.astype(np.uint16),
         }, dec)
    # ids renumbered by how often they occur in this store's top-k (the table is stored too)
    counts = np.bincount(r["topk_ids"].ravel(), minlength=vocab)
    by_freq = np.argsort(-counts, kind="stable")
    new_id = np.empty(vocab, np.int64)
    new_id[by_freq] = np.arange(vocab)
    d = enc.encode_topk(lp, scale)
    out["remapped ids + table + qdelta 1/128"] = (
        {**v2, "topk_ids": new_id[r["topk_ids"]].astype(np.uint16), "id_table": by_freq.astype(np.uint16),
         "topk_logprobs": d},
        enc.decode_topk(d, tail, scale))
    return out


def errors(decoded: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    err = np.abs(decoded.astype(np.float64) - exact.astype(np.float64))
    keep = exact >= np.log(P_MIN)
    return {"max_err_p_ge_1e-4": float(err[keep].max()), "max_err_all": float(err.max()),
            "mean_err_p_ge_1e-4": float(err[keep].mean())}


def sampled_targets(r: dict[str, np.ndarray], n_draws: int, tokens: int, tmp: Path, chunk_rows: int) -> dict:
    """Sparse Logit Sampling as ``--targets sampled`` writes it: N draws per position from the
    teacher's distribution as vLLM returns it (top-k + one tail bucket for the mass outside it),
    kept as unique ids + counts. Counts of top-k ids and of the bucket are exact multinomial draws,
    so count/N is unbiased for each top-k probability and for the tail mass as a whole; a draw that
    the full teacher would give to a token outside the top-k lands in the bucket, its identity
    unknown. Sampling from the top-k renormalised instead (ignoring the tail) inflates every top-k
    probability by 1/(1 - tail): its total-variation bias per position is exactly the tail mass."""
    from kdstream.storage import encoding as enc

    p = np.exp(r["topk_logprobs"].astype(np.float64))  # (S, L-1, k)
    tail = np.clip(1.0 - p.sum(-1), 0.0, 1.0)  # (S, L-1)
    width = min(n_draws, p.shape[-1])
    d = enc.draw_samples(r["topk_ids"], r["topk_logprobs"], n_draws, width, np.random.default_rng(0))
    ids, c, tail_counts = d["sample_ids"], d["sample_counts"].astype(np.int64), d["sample_tail_count"]
    unique = (c > 0).sum(-1)  # (S, L-1)
    match = (ids[..., :, None] == r["topk_ids"][..., None, :]) & (c > 0)[..., :, None]  # (S, L-1, slot, rank)
    top_counts = (match.astype(np.uint8) * c.astype(np.uint8)[..., :, None]).sum(-2, dtype=np.int64)  # (S, L-1, k)
    base = {"input_ids": r["input_ids"].astype(np.uint16), "example_id": r["example_id"],
            "doc_index": r["doc_index"], "target_logprob": r["target_logprob"].astype(np.float32),
            "target_rank": r["target_rank"].astype(np.uint16), "sample_tail_count": tail_counts.astype(np.uint8)}
    by_count = {**base, "sample_ids": ids.astype(np.uint16), "sample_counts": c.astype(np.uint8)}
    # the same set in ascending id order, ids delta-coded (pads, id 0, sort first: delta 0)
    o2 = np.argsort(np.where(c > 0, ids, -1), -1, kind="stable")
    ids2, c2 = np.take_along_axis(ids, o2, -1), np.take_along_axis(c, o2, -1)
    by_id = {**base, "sample_ids": np.diff(ids2, axis=-1, prepend=0).astype(np.uint16),
             "sample_counts": c2.astype(np.uint8)}
    sizes = {f"{layout} {kind}": round(write_arrays(tmp / "sampled.zarr", arrays, kind, chunk_rows) / tokens, 2)
             for layout, arrays in (("count order", by_count), ("id order+delta", by_id))
             for kind in ("zstd:3", "blosc-shuffle:5")}
    est = top_counts / n_draws  # (S, L-1, k) unbiased estimates of p
    return {"samples": n_draws, "width": width, "unique_ids_max": int(unique.max()), "unique_ids_mean": float(unique.mean()),
            "bytes_per_token": sizes, "draws_in_tail_bucket": float(tail_counts.mean() / n_draws),
            "tail_mass_mean": float(tail.mean()),
            "renormalised_topk_tv_bias_mean": float((p / np.maximum(1 - tail, 1e-12)[..., None] - p).sum(-1).mean()),
            "estimate_mean_minus_p_max": float(np.abs(est.mean((0, 1)) - p.mean((0, 1))).max())}


def order0_entropy_bytes(values: np.ndarray, tokens: int) -> float:
    """Bytes/token of coding each value alone at its empirical frequency: a floor for per-symbol coders."""
    _, counts = np.unique(values.ravel(), return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum() / 8 / tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--store", default=None, help="an existing fp32 (or format v1) store: skip the teacher pass")
    args = ap.parse_args()

    from kdstream.storage import StoreWriter, open_store
    from kdstream.storage.schema import default_chunk_rows

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        src = Path(args.store) if args.store else teacher_store(tmp / "fp32.zarr", args.examples, args.seq_len, args.top_k)
        teacher_s = time.perf_counter() - t0
        store = open_store(str(src))
        if store.attrs.get("encoding", {}).get("topk_logprobs", "fp32") != "fp32":
            raise SystemExit(f"{src} is not an fp32 store: pass one written with --logprob-encoding fp32")
        r = store[:]
        S, L, k, V = len(store), store.seq_len, store.k, store.vocab_size
        tokens = S * L
        exact = r["topk_logprobs"]
        chunk_rows = default_chunk_rows(L, k, V, S)
        results = []
        for name, (arrays, decoded) in candidates(r, V).items():
            err = errors(decoded, exact)
            kinds = ("zstd:3", "blosc-shuffle:5") if "v1" in name or "fp16" in name or "bf16" in name else \
                ("zstd:3", "blosc-shuffle:3", "blosc-shuffle:5", "blosc-shuffle:9", "blosc-bitshuffle:5")
            for kind in kinds:
                size = write_arrays(tmp / "cand.zarr", arrays, kind, chunk_rows)
                results.append({"encoding": name, "codecs": kind, "bytes_per_token": round(size / tokens, 2), **err})

        sampled = sampled_targets(r, 64, tokens, tmp, chunk_rows)

        # The chosen encoding through kdstream's own writer and reader.
        out = tmp / "chosen.zarr"
        w = StoreWriter(str(out), num_examples=S, seq_len=L, k=k, vocab_size=V, attrs={})
        t = time.perf_counter()
        w.append({key: r[key] for key in ("input_ids", "example_id", "doc_index", "topk_ids", "topk_logprobs",
                                          "target_logprob", "target_rank")})
        w.finalize()
        write_s = time.perf_counter() - t
        back = open_store(str(out))
        t = time.perf_counter()
        got = back[:]
        read_s = time.perf_counter() - t
        chosen = {"encoding": back.attrs["encoding"], "bytes_per_token": round(dir_bytes(out) / tokens, 2),
                  "array_bytes_per_token": {n: round(dir_bytes(out / n) / tokens, 2) for n in back._arrays},
                  **errors(got["topk_logprobs"], exact),
                  "target_max_err": float(np.abs(got["target_logprob"] - r["target_logprob"]).max()),
                  "ids_exact": bool(np.array_equal(got["topk_ids"], r["topk_ids"])),
                  "write_tokens_per_s": round(tokens / write_s), "read_tokens_per_s": round(tokens / read_s)}
        print(json.dumps({
            "teacher": "SmolLM2-135M-Instruct", "corpus": "demo", "examples": S, "seq_len": L, "k": k,
            "vocab_size": V, "tokens": tokens, "teacher_seconds": round(teacher_s, 1) if not args.store else None,
            "fp32_store_bytes_per_token": round(dir_bytes(src) / tokens, 2),
            "entries_p_ge_1e-4": float((exact >= np.log(P_MIN)).mean()),
            "topk_ids_order0_entropy_bytes_per_token": round(order0_entropy_bytes(r["topk_ids"], tokens), 2),
            "targets": {"bytes_per_token": 96, "max_err_p_ge_1e-4": 0.01},
            "candidates": sorted(results, key=lambda x: x["bytes_per_token"]), "chosen": chosen,
            "sampled_targets": sampled,
        }, indent=1))


if __name__ == "__main__":
    main()
