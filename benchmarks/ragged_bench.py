"""Ragged stores (``--top-p`` / ``--budget``) against fixed top-k on real teacher rows: bytes/token,
entries per position, captured mass, and read rates as a ratio to fixed.

SmolLM2-135M-Instruct scores the demo corpus through the real ``precompute-logits`` CLI with exact
fp32 logprobs at top-``--top-k`` (``--backend hf`` by default: no vLLM engine to start; or pass an
existing fp32 store with ``--store``). Those rows are then written by kdstream's StoreWriter as a
fixed top-k qdelta store and as ragged ones (each ``--top-p`` and ``--budget`` value), all read
back with ``open_store``:

- bytes/token of the whole store and of each array, entries per position (mean, p10, p90), mean
  captured mass (Σ exp of the decoded kept logprobs) and mean uncaptured mass;
- bytes per stored entry of each store's entries (topk_index + topk_logprobs + id_table), so that
  ragged and fixed rows compare at equal entries;
- ``read``: the fixed and one ragged store read whole, chunk by chunk into torch tensors,
  alternately pass by pass (store_bench.read_rates, local only), so that both see the same load:
  the ragged/fixed ratio is the figure on a busy machine. Measured twice, each in a fresh
  process: with freed memory kept for reuse, as kdstream's loaders read (storage/memory.py), and
  with glibc's default malloc thresholds.

    python -m benchmarks.ragged_bench [--examples 64] [--seq-len 256] [--top-k 64]
    python -m benchmarks.ragged_bench --store EXISTING_FP32_STORE

Saves benchmarks/results/ragged_bench.json.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.results import save
from benchmarks.store_bench import dir_bytes


def teacher_store(out: Path, examples: int, seq_len: int, top_k: int, backend: str) -> Path:
    """The real precompute-logits CLI (fp32 logprobs) on SmolLM2 over the demo corpus into ``out``."""
    from benchmarks.smollm2 import smollm2_dir

    cmd = [sys.executable, "-m", "kdstream", "precompute-logits", "--model", str(smollm2_dir()),
           "--dataset", "demo", "--out", str(out), "--top-k", str(top_k), "--seq-len", str(seq_len),
           "--max-examples", str(examples), "--dtype", "float32", "--batch-size", "8",
           "--logprob-encoding", "fp32", "--backend", backend, "--overwrite"]
    subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"}, stdout=subprocess.DEVNULL)
    return out


def write(rows: dict, attrs: dict, out: Path, selection: dict | None, chunk_rows: int) -> Path:
    from kdstream.storage import StoreWriter

    w = StoreWriter(str(out), num_examples=len(rows["input_ids"]), seq_len=attrs["seq_len"], k=attrs["k"],
                    vocab_size=attrs["vocab_size"], attrs={"targets": "topk"}, chunk_rows=chunk_rows,
                    selection=selection, overwrite=True)
    w.append(rows)
    w.finalize()
    return out


ENTRY_ARRAYS = ("topk_index", "topk_logprobs", "id_table")  # what each stored entry costs


def measure(url: Path, tokens: int) -> dict:
    from kdstream.storage import open_store

    store = open_store(str(url))
    got = store.read(0, len(store), ("topk_logprobs", "topk_len"))
    n = got["topk_len"]
    mass = np.exp(got["topk_logprobs"].astype(np.float64)).sum(-1)  # (S, L-1) captured
    arrays = {name: dir_bytes(url / name) for name in sorted(os.listdir(url)) if (url / name).is_dir()}
    entries = float(n.sum())
    return {"bytes_per_token": round(dir_bytes(url) / tokens, 2),
            "entry_bytes_per_entry": round(sum(arrays[a] for a in ENTRY_ARRAYS) / entries, 3),
            "array_bytes_per_token": {k: round(v / tokens, 2) for k, v in arrays.items()},
            "entries_mean": round(float(n.mean()), 2),
            "entries_p10": int(np.quantile(n, 0.1, method="inverted_cdf")),
            "entries_p90": int(np.quantile(n, 0.9, method="inverted_cdf")),
            "entries_max": int(n.max()),
            "captured_mass_mean": round(float(mass.mean()), 5),
            "uncaptured_mass_mean": round(float(1 - mass.mean()), 5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--backend", default="hf")
    ap.add_argument("--store", default=None, help="an existing fp32 top-k store (skip the teacher pass)")
    ap.add_argument("--top-p", type=float, nargs="*", default=[0.9, 0.95, 0.99])
    ap.add_argument("--budget", type=float, nargs="*", default=[8, 16, 32])
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()

    from benchmarks.store_bench import read_rates
    from kdstream.storage import open_store
    from kdstream.storage import selection as sel

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = Path(args.store) if args.store else teacher_store(tmp / "fp32.zarr", args.examples, args.seq_len,
                                                                 args.top_k, args.backend)
        exact = open_store(str(src))
        attrs = {key: exact.attrs[key] for key in ("seq_len", "k", "vocab_size")}
        rows = exact[:]
        tokens = len(exact) * exact.seq_len
        R = exact.chunk_rows
        out: dict = {"teacher": exact.attrs["teacher"]["name"], "examples": len(exact), "seq_len": exact.seq_len,
                     "k": exact.k, "chunk_rows": R, "stores": {}}
        stores = {"fixed": write(rows, attrs, tmp / "fixed.zarr", None, R)}
        for p in args.top_p:
            stores[f"top_p_{p:g}"] = write(rows, attrs, tmp / f"p{p}.zarr", sel.describe("top_p", exact.k, p=p), R)
        for b in args.budget:
            stores[f"budget_{b:g}"] = write(rows, attrs, tmp / f"b{b}.zarr", sel.describe("budget", exact.k, budget=b), R)
        for label, url in stores.items():
            out["stores"][label] = measure(url, tokens)
            print(label, out["stores"][label]["bytes_per_token"], out["stores"][label]["entries_mean"], flush=True)

        ragged = f"budget_{args.budget[-1]:g}" if args.budget else label
        out["read"] = {"ragged_store": ragged}
        for memory, keep in (("kept_freed_memory", True), ("default_malloc", False)):
            rates = read_rates({"fixed": stores["fixed"], ragged: stores[ragged]}, passes=args.passes,
                               where=("local",), keep_freed=keep)
            rates["ragged_over_fixed_median"] = {
                kind: round(rates[f"{ragged}_local_{kind}"]["tokens_per_s_median"]
                            / rates[f"fixed_local_{kind}"]["tokens_per_s_median"], 3)
                for kind in ("all_keys", "trainer_keys")}
            out["read"][memory] = rates
            print(memory, {k: v for k, v in rates.items() if k.endswith("keys")}, flush=True)
    save("ragged_bench", out)


if __name__ == "__main__":
    main()
