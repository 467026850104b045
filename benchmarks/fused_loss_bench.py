"""Peak memory and time of the fused output layer + loss (fused_head.py) vs the plain full-logits path.

V = 50,304 (Pythia's vocabulary), 2,048 positions (8 x 257 tokens), a 1-layer GPT-NeoX of
hidden 256, forward KL on top-64 + tail, T = 2, forward + backward. Each path runs in its own
process; peak memory is the rise of the process's max RSS over its RSS before the first step;
time is the fastest of --steps steps. Prints one JSON object, with the sizes that explain the
figures: one chunk's fp32 logits, the full (N, V) logits, the head's gradient (the fused path
holds it through the forward), all parameter gradients, and the load average when it ran.

    python -m benchmarks.fused_loss_bench [--chunk auto|512]   # saves benchmarks/results/fused_loss_bench[-chunkN].json

The fused path holds about two chunk-sized (c, V) fp32 tensors at a time (logits + log-probs in
forward, log-probs + their gradient in backward) plus grad_W; the plain path about three (N, V)
ones. Measured figures: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.results import ROOT, save

V, B, L, K, H = 50304, 8, 257, 64, 256


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one_path(chunk: int | None, steps: int) -> dict:
    import torch

    from benchmarks.fixtures import tiny_gpt_neox
    from kdstream.distill.objective import Objective

    net = tiny_gpt_neox(V, hidden=H, layers=1, heads=4, positions=512)
    ids = torch.randint(0, V, (B, L))
    topk_ids = torch.randint(0, V, (B, L - 1, K))
    topk_lp = torch.log_softmax(torch.randn(B, L - 1, K), -1) - 0.1  # leaves ~10% tail mass
    obj = Objective(net, loss="forward_kl", temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.0, chunk=chunk)
    before = rss_mb()
    times = []
    for _ in range(steps):
        net.zero_grad(set_to_none=True)
        t = time.perf_counter()
        obj(ids, topk_ids, topk_lp)[0].backward()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB
    grads_mb = sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20
    return {"chunk": chunk, "peak_rise_mb": round(peak - before, 1), "step_s": round(min(times), 3),
            "param_grads_mb": round(grads_mb, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunk", default="auto", help="positions per chunk; auto: the trainer's default (fused_head.auto_chunk)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--_child", default=None)
    a = ap.parse_args()
    result = "fused_loss_bench" if a.chunk == "auto" else f"fused_loss_bench-chunk{a.chunk}"
    if a.chunk == "auto":
        from kdstream.distill.fused_head import auto_chunk

        a.chunk = auto_chunk(V)
    a.chunk = int(a.chunk)
    if a._child is not None:
        print(json.dumps(one_path(None if a._child == "plain" else int(a._child), a.steps)))
        return
    runs = {}
    for name, arg in (("plain", "plain"), ("fused", str(a.chunk))):
        out = subprocess.run([sys.executable, "-m", "benchmarks.fused_loss_bench", "--_child", arg, "--steps", str(a.steps)],
                             capture_output=True, text=True, check=True, cwd=ROOT).stdout
        runs[name] = json.loads(out.strip().splitlines()[-1])
    save(result, {
        "chunk": a.chunk, "vocab": V, "positions": B * (L - 1), "k": K,
        **{f"{n}_{k}": v for n, r in runs.items() for k, v in r.items()},
        "chunk_logits_mb": round(a.chunk * V * 4 / 2**20, 1), "all_logits_mb": round(B * (L - 1) * V * 4 / 2**20, 1),
        "head_grad_mb": round(V * H * 4 / 2**20, 1), "load_average_1m": round(os.getloadavg()[0], 2),
        "memory_ratio": round(runs["fused"]["peak_rise_mb"] / runs["plain"]["peak_rise_mb"], 3),
        "time_ratio": round(runs["fused"]["step_s"] / runs["plain"]["step_s"], 3),
    })


if __name__ == "__main__":
    main()
