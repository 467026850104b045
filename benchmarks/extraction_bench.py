"""Extraction throughput: vLLM fast path vs vLLM greedy generation vs HF transformers ``generate``,
on SmolLM2-135M-Instruct over real English text (the embedded demo corpus), in one process.

Prefix 32 → suffix 32 tokens by default (``--prefix-len/--suffix-len``; the paper's is 50 → 50;
``--prefix-len 32,8,16,24`` times a sweep: generate runs once per length, the fast path once for
all, as extract-eval does, and rates count verdicts, one per example and length),
examples packed with the model's tokenizer, float32 on every engine (``--dtype``). HF runs on the
first --hf-examples only (it is the slow one), in batches of --hf-batch-size (default: all at once;
1 is what the reference implementations do, one ``generate`` per example). Each engine is warmed up
on a few examples first and timed on the rest; vLLM's prefix cache is emptied before each timed
pass (otherwise one path's prefill is served from the other's). Prints one JSON object:
verdicts/s per path, the ratios fast/generate (target ≥ 3) and vllm_generate/hf_generate (target
≥ 20), and how often the verdicts (exact match, first divergence) agree, with the margins of any
disagreement.

    python -m benchmarks.extraction_bench [--examples 128] [--hf-examples 8] [--hf-batch-size 1]

Saves benchmarks/results/extraction_bench-p<prefix lens>-s<suffix>.json. On a compute-bound CPU a
decode step over B sequences costs about what B prompt tokens cost, so greedy decoding of n tokens
costs about a prefill of n tokens: the teacher-forced pass does the same arithmetic and wins only
where decoding is memory-bound (a GPU), or over a sweep (one pass answers every prefix length).
Measured figures: docs/benchmarks.md.

"""
from __future__ import annotations

import argparse
import os
import time

from benchmarks.results import save

PREFIX, SUFFIX = 32, 32


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--hf-examples", type=int, default=8)
    ap.add_argument("--hf-batch-size", type=int, default=None, help="HF generate batch (default: all hf-examples at once)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--prefix-len", default=str(PREFIX), help="one length or a comma list (a sweep), e.g. 8,16,24,32")
    ap.add_argument("--suffix-len", type=int, default=SUFFIX)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from benchmarks.smollm2 import smollm2_dir
    from kdstream.data import load_corpus, pack_examples
    from kdstream.engines.vllm import EngineOptions
    from kdstream.extract.fast_path import NEAR_TIE
    from kdstream.extract.hf_backend import HfBackend
    from kdstream.extract.run import fast_verdicts, generate_verdicts, parse_prefix_lens
    from kdstream.extract.vllm_backend import VllmBackend
    from kdstream.text.tokenizers import load_tokenizer

    lens, N = parse_prefix_lens(args.prefix_len), args.suffix_len
    P, hi = lens[0], max(lens)  # HF runs the first (primary) prefix length only
    model = smollm2_dir()
    warm = 8
    ex = pack_examples(load_corpus("demo").texts, load_tokenizer(model), hi + N, args.examples + warm)
    ids = ex.input_ids  # (warm + S, max(P) + N)
    if len(ids) < args.examples + warm:
        raise SystemExit(f"the demo corpus packs into only {len(ids)} examples of {hi + N} tokens")
    warm_ids, ids = ids[:warm], ids[warm:]
    engine = EngineOptions(dtype=args.dtype)

    # the product's own passes (extract/run.py): generate once per prefix length, fast
    # once for all of them
    vllm = VllmBackend(str(model), hi + N + 1, engine)
    generate_verdicts(vllm, warm_ids, lens, N, 0, args.batch_size), fast_verdicts(vllm, warm_ids, lens, N, 0, args.batch_size)
    # vLLM's prefix cache would serve one path's prompts from the other's (the prefixes are shared):
    # empty it before each timed pass so both pay for their own prefill
    vllm.llm.reset_prefix_cache()
    gen, t_gen = timed(generate_verdicts, vllm, ids, lens, N, 0, args.batch_size)
    vllm.llm.reset_prefix_cache()
    fast, t_fast = timed(fast_verdicts, vllm, ids, lens, N, 0, args.batch_size)
    del vllm

    h = args.hf_examples
    hf = HfBackend(str(model), engine)
    hf.greedy(warm_ids[:2, :P], N)
    hf_run, t_hf = timed(generate_verdicts, hf, ids[:h], (P,), N, 0, args.hf_batch_size or h)
    hf_gen = hf_run[P]  # (h, N) generated_ids and their match metrics

    differ = {p: (gen[p]["exact"] != fast[p]["exact"]) | (gen[p]["prefix_match_len"] != fast[p]["prefix_match_len"])
              for p in lens}
    S, g = len(ids), gen[P]
    # a verdict per example and prefix length: a sweep of m lengths is m verdicts per example
    rates = {"vllm_fast": S * len(lens) / t_fast, "vllm_generate": S * len(lens) / t_gen, "hf_generate": h / t_hf}
    save(f"extraction_bench-p{'_'.join(map(str, lens))}-s{N}", {
        "model": "SmolLM2-135M-Instruct", "dtype": args.dtype, "corpus": "demo (embedded English text)",
        "prefix_lens": list(lens), "suffix_len": N, "examples": S, "hf_examples": h,
        "hf_batch_size": args.hf_batch_size or h, "hf_prefix_len": P,
        "batch_size": args.batch_size, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0],
        "verdicts_per_s": {k: round(v, 2) for k, v in rates.items()},
        "fast_over_generate": round(rates["vllm_fast"] / rates["vllm_generate"], 2),
        "vllm_generate_over_hf_generate": round(rates["vllm_generate"] / rates["hf_generate"], 2),
        "memorized": {p: {"vllm_generate": int(gen[p]["exact"].sum()), "vllm_fast": int(fast[p]["exact"].sum())}
                      for p in lens},
        "verdicts": {
            "fast_vs_generate_agree": int(sum((~d).sum() for d in differ.values())),
            "fast_vs_generate_differ": int(sum(d.sum() for d in differ.values())),
            "differ_margins": [round(float(m), 5) for p in lens for m in fast[p]["margin"][differ[p]]],
            "near_tie_margin": NEAR_TIE,
            "hf_vs_vllm_generate_same_tokens": int((hf_gen["generated_ids"] == g["generated_ids"][:h]).all(axis=1).sum()),
            "hf_vs_vllm_generate_same_prefix_match": int((hf_gen["prefix_match_len"] == g["prefix_match_len"][:h]).sum()),
        },
        "mean_prefix_match_len": round(float(g["prefix_match_len"].mean()), 2),
    })


if __name__ == "__main__":
    main()
