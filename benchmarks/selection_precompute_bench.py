"""precompute-logits with ``--budget`` / ``--top-p`` against the same run at fixed top-k: does
choosing each row's length cost teacher throughput?

One vLLM teacher (SmolLM2-135M-Instruct by default, exact fp32 weights) is loaded once; a first
fixed top-k run warms it (vLLM compiles its rank kernel on the first prompt-logprobs call). Then
``--rounds`` rounds each write one store per arm, in turn (fixed, each ``--budget``, each
``--top-p``; each round starts one arm later, so that no arm always runs last), over the same
examples, so that all arms see the same machine load. The figure per
arm is the median of its rounds' ``tokens_per_s`` (run_precompute's summary: scoring and writing,
model loading excluded), and its ratio to fixed top-k's. The rows' lengths are chosen in the
background writer, so its busy seconds bound what the choice can cost: ``over_fixed_writer_bound``
is the ratio if all of an arm's extra writer time had stalled the teacher (on a shared 2-core
machine the teacher pass itself varies by ~10% from run to run, more than that bound).

    python -m benchmarks.selection_precompute_bench [--model smollm2|DIR] [--examples 64]
        [--seq-len 256] [--top-k 64] [--budget 32] [--top-p 0.95] [--rounds 3]

Saves benchmarks/results/selection_precompute_bench.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks.results import save


def arms(args) -> dict[str, dict]:
    """Label → the PrecomputeOptions fields that differ from fixed top-k."""
    out: dict[str, dict] = {f"top_{args.top_k}": {}}
    out.update({f"budget_{b:g}": {"budget": b} for b in args.budget})
    out.update({f"top_p_{p:g}": {"top_p": p} for p in args.top_p})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | a HF model directory")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--budget", type=float, nargs="*", default=[32])
    ap.add_argument("--top-p", type=float, nargs="*", default=[0.95])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    from kdstream.engines.vllm import EngineOptions
    from kdstream.model_files import check_model_dir
    from kdstream.precompute import PrecomputeOptions, run_precompute
    from kdstream.precompute.backends import make_teacher

    model = args.model
    if model == "smollm2":
        from benchmarks.smollm2 import smollm2_dir

        model = str(smollm2_dir())
    runs: dict[str, list[dict]] = {label: [] for label in arms(args)}
    with tempfile.TemporaryDirectory() as tmp:
        def opts(name: str, **extra) -> PrecomputeOptions:
            return PrecomputeOptions(model=model, dataset="demo", out=str(Path(tmp) / name), top_k=args.top_k,
                                     seq_len=args.seq_len, max_examples=args.examples, batch_size=args.batch_size,
                                     engine=EngineOptions(dtype="float32"), overwrite=True, **extra)

        teacher = make_teacher("vllm", check_model_dir(model, "teacher"), opts("warm-up.zarr"))
        run_precompute(opts("warm-up.zarr"), teacher)
        order = list(arms(args).items())
        for r in range(args.rounds):  # each round starts one arm later: no arm always runs last
            for label, extra in order[r % len(order):] + order[: r % len(order)]:
                s = run_precompute(opts(f"{label}.zarr", **extra), teacher)
                runs[label].append({k: s[k] for k in ("tokens_per_s", "seconds", "write_seconds", "bytes_per_token")})
                print(r, label, s["tokens_per_s"], flush=True)
    base = runs[f"top_{args.top_k}"]
    fixed = statistics.median(x["tokens_per_s"] for x in base)
    fixed_s, fixed_write = (statistics.median(x[key] for x in base) for key in ("seconds", "write_seconds"))

    def summary_of(rs: list[dict]) -> dict:
        write = statistics.median(x["write_seconds"] for x in rs)
        return {"tokens_per_s_median": round(statistics.median(x["tokens_per_s"] for x in rs), 1),
                "over_fixed": round(statistics.median(x["tokens_per_s"] for x in rs) / fixed, 3),
                "over_fixed_per_round": [round(x["tokens_per_s"] / y["tokens_per_s"], 3) for x, y in zip(rs, base)],
                "write_seconds_median": round(write, 3),
                # the selection runs in the background writer (encode + write), nowhere else: the
                # run's ratio if all of its extra writer time had stalled the teacher
                "over_fixed_writer_bound": round(fixed_s / (fixed_s + max(0.0, write - fixed_write)), 4),
                "bytes_per_token": rs[-1]["bytes_per_token"]}

    summary = {label: summary_of(rs) for label, rs in runs.items()}
    save("selection_precompute_bench", {
        "model": Path(model).name if args.model != "smollm2" else "smollm2-135m-instruct", "examples": args.examples,
        "seq_len": args.seq_len, "top_k": args.top_k, "rounds": args.rounds, "cpus": os.cpu_count(),
        "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
