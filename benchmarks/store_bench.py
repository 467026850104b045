"""The shipped store encodings on real teacher output: bytes/token, fidelity, write and read rates.

SmolLM2-135M-Instruct (benchmarks/smollm2.py) scores the demo corpus (packed with its tokenizer)
through the real ``precompute-logits`` CLI with exact fp32 logprobs (top-64 by default). Those
rows are then written by kdstream's own StoreWriter with the default encoding (``qdelta``) and
read back with ``open_store``: bytes/token of the whole store and of each array, the worst
|decoded − fp32| logprob over the entries with p >= 1e-4 and over all entries, the target and
tail errors, and whether the ids come back exact. ``sampled_targets``: the same rows as
``--targets sampled`` writes them (N = 64 draws). ``read``: reading the qdelta store chunk by
chunk into torch tensors, from local disk and over a local HTTP server.

    python -m benchmarks.store_bench [--examples 424] [--seq-len 256] [--top-k 64]
    python -m benchmarks.store_bench --store EXISTING_FP32_STORE   # skip the teacher pass

Saves benchmarks/results/store_bench.json. How the encoding was chosen (the candidates it was
measured against, entropy bounds, the older format's read rates):
benchmarks/research/store_encoding_search.py.
"""
from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from benchmarks.results import save

P_MIN = 1e-4  # the error target applies to entries with p >= 1e-4
TRAINER_KEYS = ("input_ids", "topk_ids", "topk_logprobs", "example_id")  # what the distill loader reads


def teacher_store(out: Path, examples: int, seq_len: int, top_k: int) -> Path:
    """Run the real precompute-logits CLI (vLLM, fp32 logprobs) into ``out``."""
    from benchmarks.smollm2 import smollm2_dir

    cmd = [sys.executable, "-m", "kdstream", "precompute-logits", "--model", str(smollm2_dir()),
           "--dataset", "demo", "--out", str(out), "--top-k", str(top_k), "--seq-len", str(seq_len),
           "--max-examples", str(examples), "--dtype", "float32", "--batch-size", "16",
           "--logprob-encoding", "fp32", "--overwrite"]
    env = {**os.environ, "TQDM_DISABLE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def dir_bytes(root: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(root) for f in names)


def errors(decoded: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    err = np.abs(decoded.astype(np.float64) - exact.astype(np.float64))
    keep = exact >= np.log(P_MIN)
    return {"max_err_p_ge_1e-4": float(err[keep].max()), "max_err_all": float(err.max()),
            "mean_err_p_ge_1e-4": float(err[keep].mean())}


def sampled_targets(r: dict[str, np.ndarray], vocab: int, n_draws: int, tokens: int, tmp: Path) -> dict:
    """Sparse Logit Sampling as ``--targets sampled`` writes it (StoreWriter, draws per example
    from ``encoding.draw_samples_by_example``, seed 0): N draws per position from the teacher's
    distribution as vLLM returns it (top-k + one tail bucket for the mass outside it), kept as
    unique ids + counts. Counts of top-k ids and of the bucket are exact multinomial draws, so
    count/N is unbiased for each top-k probability and for the tail mass as a whole; sampling
    from the top-k renormalised instead (ignoring the tail) inflates every top-k probability by
    1/(1 - tail): its total-variation bias per position is exactly the tail mass."""
    from kdstream.storage import StoreWriter
    from kdstream.storage import encoding as enc

    p = np.exp(r["topk_logprobs"].astype(np.float64))  # (S, L-1, k)
    tail = np.clip(1.0 - p.sum(-1), 0.0, 1.0)  # (S, L-1)
    S, L = r["input_ids"].shape
    width = min(n_draws, p.shape[-1])
    d = enc.draw_samples_by_example(r["topk_ids"], r["topk_logprobs"], n_draws, width, 0, r["example_id"])
    c, tail_counts = d["sample_counts"].astype(np.int64), d["sample_tail_count"]
    unique = (c > 0).sum(-1)  # (S, L-1)
    match = (d["sample_ids"][..., :, None] == r["topk_ids"][..., None, :]) & (c > 0)[..., :, None]
    top_counts = (match.astype(np.uint8) * c.astype(np.uint8)[..., :, None]).sum(-2, dtype=np.int64)  # (S, L-1, k)
    out = tmp / "sampled.zarr"
    w = StoreWriter(str(out), num_examples=S, seq_len=L, k=width, vocab_size=vocab, attrs={},
                    encoding="sampled", samples=n_draws)
    w.append({key: r[key] for key in ("input_ids", "example_id", "doc_index", "target_logprob", "target_rank",
                                      "topk_ids", "topk_logprobs")})  # the writer draws d again (seed 0)
    w.finalize()
    est = top_counts / n_draws  # (S, L-1, k) unbiased estimates of p
    return {"samples": n_draws, "width": width, "unique_ids_max": int(unique.max()),
            "unique_ids_mean": round(float(unique.mean()), 2),
            "bytes_per_token": round(dir_bytes(out) / tokens, 2),
            "array_bytes_per_token": {n: round(dir_bytes(out / n) / tokens, 2) for n in sorted(os.listdir(out))
                                      if (out / n).is_dir()},
            "draws_in_tail_bucket": round(float(tail_counts.mean() / n_draws), 4),
            "tail_mass_mean": round(float(tail.mean()), 4),
            "renormalised_topk_tv_bias_mean": round(
                float((p / np.maximum(1 - tail, 1e-12)[..., None] - p).sum(-1).mean()), 4),
            "estimate_mean_minus_p_max": float(np.abs(est.mean((0, 1)) - p.mean((0, 1))).max())}


def reader_pass(url: str, keys: tuple[str, ...] | None):
    """A function reading the whole store once, chunk by chunk, into torch tensors; it returns
    (tokens per wall second, tokens per CPU second of this process, all threads)."""
    import torch

    from kdstream.storage import open_store

    store = open_store(url)
    n, R = len(store), store.chunk_rows

    def one() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for a in range(0, n, R):
            rows = store[a : min(a + R, n)] if keys is None else store.read(a, min(a + R, n), keys)
            {key: torch.from_numpy(v) for key, v in rows.items()}  # (B, …) tensors, no copy
        return n * store.seq_len / (time.perf_counter() - wall), n * store.seq_len / (time.process_time() - cpu)

    return one


def http_server(root: Path):
    """Serve ``root`` read-only on a free loopback port (as the remote-store tests do)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        # the stdlib's listen backlog is 5: ten concurrent requests overflow it and the dropped
        # connections retry after a 1 s SYN timeout. Real servers queue hundreds (nginx: 511).
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def read_rates(stores: dict[str, Path], passes: int = 7, where: tuple[str, ...] = ("local", "http"),
               keep_freed: bool = True) -> dict:
    """Tokens/s reading each store whole, chunk by chunk, local and over HTTP (each store's parent
    directory served), all keys and the trainer's keys, in a fresh process: with freed memory
    kept for reuse as kdstream's loaders run (``keep_freed``: storage/memory.py) or with glibc's
    default thresholds. The stores are read alternately, pass by pass, so that all see the same
    machine load: median and best of ``passes`` passes each, after one warm-up pass."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:  # malloc settings last a process
        return pool.apply(_read_rates, (stores, passes, where, keep_freed))


def _read_rates(stores: dict[str, Path], passes: int, where: tuple[str, ...], keep_freed: bool) -> dict:
    from kdstream.storage.memory import keep_freed_memory

    out: dict = {"load_before": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), "passes": passes,
                 "kept_freed_memory": keep_freed and keep_freed_memory()}
    servers = {}
    try:
        for path in stores.values() if "http" in where else ():
            if path.parent not in servers:
                servers[path.parent] = http_server(path.parent)
        for place in where:
            for kind, keys in (("all_keys", None), ("trainer_keys", TRAINER_KEYS)):
                readers = {label: reader_pass(str(p) if place == "local" else f"{servers[p.parent][1]}/{p.name}", keys)
                           for label, p in stores.items()}
                runs: dict[str, list] = {label: [] for label in readers}
                for i in range(passes + 1):
                    for label, one in readers.items():
                        rate = one()
                        if i:  # the first pass warms caches
                            runs[label].append(rate)
                for label, r in runs.items():
                    out[f"{label}_{place}_{kind}"] = {
                        "tokens_per_s_median": round(float(np.median([w for w, _ in r]))),
                        "tokens_per_s_best": round(max(w for w, _ in r)),
                        "tokens_per_cpu_s_median": round(float(np.median([c for _, c in r])))}
    finally:
        for server, _ in servers.values():
            server.shutdown()
            server.server_close()
    out["load_after"] = round(os.getloadavg()[0], 2)
    return out


def fp32_rows(args, tmp: Path) -> tuple[Path, dict, float | None]:
    """The exact rows: an fp32 store (``--store`` or a fresh teacher pass), all of it in memory,
    and the teacher pass's seconds (None with ``--store``)."""
    from kdstream.storage import open_store

    t0 = time.perf_counter()
    src = Path(args.store) if args.store else teacher_store(tmp / "fp32.zarr", args.examples, args.seq_len, args.top_k)
    teacher_s = None if args.store else round(time.perf_counter() - t0, 1)
    store = open_store(str(src))
    if store.attrs.get("encoding", {}).get("topk_logprobs", "fp32") != "fp32":
        raise SystemExit(f"{src} is not an fp32 store: pass one written with --logprob-encoding fp32")
    return src, store[:], teacher_s


def shipped(r: dict[str, np.ndarray], vocab: int, out: Path) -> dict:
    """Write ``r`` with the default encoding through StoreWriter into ``out``, read it back: sizes and errors."""
    from kdstream.storage import StoreWriter, open_store
    from kdstream.storage import encoding as enc

    S, L = r["input_ids"].shape
    tokens, exact = S * L, r["topk_logprobs"]
    w = StoreWriter(str(out), num_examples=S, seq_len=L, k=exact.shape[-1], vocab_size=vocab, attrs={})
    t = time.perf_counter()
    w.append({key: r[key] for key in ("input_ids", "example_id", "doc_index", "topk_ids", "topk_logprobs",
                                      "target_logprob", "target_rank")})
    w.finalize()
    write_s = time.perf_counter() - t
    store = open_store(str(out))
    got = store[:]
    return {"encoding": store.attrs["encoding"], "chunk_rows": store.chunk_rows,
            "bytes_per_token": round(dir_bytes(out) / tokens, 2),
            "array_bytes_per_token": {n: round(dir_bytes(out / n) / tokens, 2) for n in sorted(os.listdir(out))
                                      if (out / n).is_dir()},
            **errors(got["topk_logprobs"], exact),
            "target_max_err": float(np.abs(got["target_logprob"].astype(np.float64) - r["target_logprob"]).max()),
            "tail_max_err": float(np.abs(got["tail_mass"] - enc.tail_mass(exact).astype(np.float64)).max()),
            "ids_exact": bool(np.array_equal(got["topk_ids"], r["topk_ids"])),
            "write_tokens_per_s": round(tokens / write_s)}


def parser(description: str) -> argparse.ArgumentParser:
    """The options of a benchmark on the fp32 SmolLM2 rows (``fp32_rows``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--examples", type=int, default=424)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--store", default=None, help="an existing fp32 store: skip the teacher pass")
    return ap


def main() -> None:
    from kdstream.storage import open_store

    args = parser(__doc__.splitlines()[0]).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, r, teacher_s = fp32_rows(args, tmp)
        S, L = r["input_ids"].shape
        V, tokens = open_store(str(src)).vocab_size, S * L
        qdelta = shipped(r, V, tmp / "qdelta.zarr")
        sampled = sampled_targets(r, V, 64, tokens, tmp)
        rates = read_rates({"qdelta": tmp / "qdelta.zarr"})
        save("store_bench", {
            "teacher": "SmolLM2-135M-Instruct", "corpus": "demo", "examples": S, "seq_len": L,
            "k": r["topk_ids"].shape[-1], "vocab_size": V, "tokens": tokens, "teacher_seconds": teacher_s,
            "fp32_store_bytes_per_token": round(dir_bytes(src) / tokens, 2),
            "target_in_topk": round(float((r["target_rank"] <= r["topk_ids"].shape[-1]).mean()), 4),
            "qdelta": qdelta, "sampled_targets": sampled, "read": rates,
        })


if __name__ == "__main__":
    main()
