"""Extraction throughput: vLLM fast path vs vLLM greedy generation vs HF transformers ``generate``,
on SmolLM2-135M-Instruct over real English text (the embedded demo corpus), in one process.

Prefix 32 → suffix 32 tokens (examples of 64 tokens packed with the model's tokenizer), float32
on every engine. HF runs on the first --hf-examples only (it is the slow one); each engine is
warmed up on a few examples first and timed on the rest. Prints one JSON object: sequences/s per
path, the ratios fast/generate (target ≥ 3) and vllm_generate/hf_generate (target ≥ 20), and
how often the verdicts (exact match, first divergence) agree, with the margins of any disagreement.

    python benchmarks/extraction_bench.py [--examples 64] [--hf-examples 8] [--batch-size 256]

Measured here (2 CPU cores shared with other jobs, load 5-8; very noisy), two runs of the
default command: fast/generate 3.1x and 4.6x; vLLM/HF generate 4.4x and 2.2x, below the ≥ 20x
target (HF decodes its 8 examples as one batch of 8, vLLM its 64 as one batch of 64). The ~40x
gap the issue quotes was not measured on this CPU machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

PREFIX, SUFFIX = 32, 32


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def batched(fn, rows: np.ndarray, n: int, batch: int):
    parts = [fn(rows[b : b + batch], n) for b in range(0, len(rows), batch)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(c) for c in zip(*parts))
    return np.concatenate(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--hf-examples", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from smollm2 import smollm2_dir

    from kdstream.data import load_corpus, load_tokenizer, pack_examples
    from kdstream.evaluate.fast_path import NEAR_TIE, teacher_forced_metrics
    from kdstream.evaluate.hf_backend import HfBackend
    from kdstream.evaluate.metrics import match_metrics
    from kdstream.evaluate.vllm_backend import VllmBackend
    from kdstream.vllm_engine import EngineOptions

    model = smollm2_dir()
    warm = 8
    ex = pack_examples(load_corpus("demo").texts, load_tokenizer(model), PREFIX + SUFFIX, args.examples + warm)
    ids = ex.input_ids  # (warm + S, 64)
    if len(ids) < args.examples + warm:
        raise SystemExit(f"the demo corpus packs into only {len(ids)} examples of {PREFIX + SUFFIX} tokens")
    warm_ids, ids = ids[:warm], ids[warm:]
    prefixes, truth = ids[:, :PREFIX], ids[:, PREFIX:]
    engine = EngineOptions(dtype="float32")

    vllm = VllmBackend(str(model), PREFIX + SUFFIX + 1, engine)
    vllm.greedy(warm_ids[:, :PREFIX], SUFFIX), vllm.score_suffix(warm_ids, SUFFIX)
    (argmax, gap), t_fast = timed(batched, vllm.score_suffix, ids, SUFFIX, args.batch_size)
    gen, t_gen = timed(batched, vllm.greedy, prefixes, SUFFIX, args.batch_size)
    del vllm

    h = args.hf_examples
    hf = HfBackend(str(model), engine)
    hf.greedy(warm_ids[:2, :PREFIX], SUFFIX)
    hf_gen, t_hf = timed(batched, hf.greedy, prefixes[:h], SUFFIX, args.batch_size)

    g, f = match_metrics(gen, truth), teacher_forced_metrics(argmax, gap, truth)
    differ = (g["exact"] != f["exact"]) | (g["prefix_match_len"] != f["prefix_match_len"])
    S = len(ids)
    rates = {"vllm_fast": S / t_fast, "vllm_generate": S / t_gen, "hf_generate": h / t_hf}
    print(json.dumps({
        "model": "SmolLM2-135M-Instruct", "dtype": "float32", "corpus": "demo (embedded English text)",
        "prefix_len": PREFIX, "suffix_len": SUFFIX, "examples": S, "hf_examples": h,
        "hf_note": f"HF generate timed on the first {h} examples only (same batch size cap)",
        "batch_size": args.batch_size, "cpu_count": os.cpu_count(),
        "sequences_per_s": {k: round(v, 2) for k, v in rates.items()},
        "fast_over_generate": round(rates["vllm_fast"] / rates["vllm_generate"], 2),
        "vllm_generate_over_hf_generate": round(rates["vllm_generate"] / rates["hf_generate"], 2),
        "memorized": {"vllm_generate": int(g["exact"].sum()), "vllm_fast": int(f["exact"].sum())},
        "verdicts": {
            "fast_vs_generate_agree": int((~differ).sum()),
            "fast_vs_generate_differ": int(differ.sum()),
            "differ_margins": [round(float(m), 5) for m in f["margin"][differ]],
            "near_tie_margin": NEAR_TIE,
            "hf_vs_vllm_generate_same_tokens": int((hf_gen == gen[:h]).all(axis=1).sum()),
            "hf_vs_vllm_generate_same_prefix_match": int(
                (match_metrics(hf_gen, truth[:h])["prefix_match_len"] == g["prefix_match_len"][:h]).sum()),
        },
        "mean_prefix_match_len": round(float(g["prefix_match_len"].mean()), 2),
    }))


if __name__ == "__main__":
    main()
