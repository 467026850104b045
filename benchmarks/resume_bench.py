"""Resume and background writing of precompute-logits on a real teacher (SmolLM2-135M-Instruct).

Three runs of the real CLI with the same options (vLLM, top-64, small chunks so there are many):
  1. uninterrupted: its tokens/s, and how long the background writer worked (encode + Zarr) vs
     how long the teacher loop waited for it (what the overlap did not hide);
  2. the same command, SIGKILLed right after its first chunk is marked done;
  3. the same command again: it resumes. Its store must equal run 1's, array by array, and
     `kdstream store verify` must pass.

    python -m benchmarks.resume_bench [--examples 32] [--seq-len 256] [--top-k 64] [--batch-size 8]
                                     [--chunk-rows 4] [--dtype auto] [--model DIR]

Saves benchmarks/results/resume_bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.results import save

ENV = {**os.environ, "TQDM_DISABLE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}


def command(args, model: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "kdstream", "precompute-logits", "--model", model, "--dataset", "demo",
            "--out", str(out), "--top-k", str(args.top_k), "--seq-len", str(args.seq_len),
            "--max-examples", str(args.examples), "--batch-size", str(args.batch_size),
            "--chunk-rows", str(args.chunk_rows), "--dtype", args.dtype]


def run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, check=True, env=ENV, capture_output=True, text=True)
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def killed_after_first_chunk(cmd: list[str], out: Path) -> list[int]:
    """Start ``cmd``, SIGKILL it once chunk 0 is marked done; the chunks marked by then."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "chunk_done" / "c" / "0"
    while not marker.exists():
        if proc.poll() is not None:
            sys.exit("error: the run ended before its first chunk was marked")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return sorted(int(p.name) for p in marker.parent.iterdir() if p.name.isdigit())


def same_arrays(a: Path, b: Path) -> dict[str, bool]:
    import zarr

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    return {name: bool(np.array_equal(ga[name][:], gb[name][:])) for name in sorted(ga.array_keys())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-rows", type=int, default=4)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--model", default=None, help="teacher directory (default: SmolLM2-135M-Instruct)")
    args = parser.parse_args()
    if args.model is None:
        from benchmarks.smollm2 import smollm2_dir

        args.model = str(smollm2_dir())
    with tempfile.TemporaryDirectory() as tmp:
        whole, resumed = Path(tmp) / "whole.zarr", Path(tmp) / "resumed.zarr"
        first = run(command(args, args.model, whole))
        marked = killed_after_first_chunk(command(args, args.model, resumed), resumed)
        second = run(command(args, args.model, resumed))
        verify = subprocess.run([sys.executable, "-m", "kdstream", "store", "verify", str(resumed)],
                                env=ENV, capture_output=True, text=True)
        equal = same_arrays(whole, resumed)
    equal.pop("chunk_done")  # markers: equal too, but not data
    save("resume_bench", {
        "model": args.model, "examples": args.examples, "seq_len": args.seq_len, "top_k": args.top_k,
        "batch_size": args.batch_size, "chunk_rows": args.chunk_rows, "dtype": args.dtype,
        "uninterrupted": {key: first[key] for key in ("tokens", "seconds", "tokens_per_s", "write_seconds",
                                                      "write_wait_seconds", "chunks_written", "bytes_per_token")},
        "write_share_of_run": round(first["write_seconds"] / first["seconds"], 4),
        "write_hidden_fraction": round(1 - first["write_wait_seconds"] / first["write_seconds"], 4)
        if first["write_seconds"] else None,
        "killed_after_chunks_marked": marked,
        "resumed": {key: second[key] for key in ("tokens", "seconds", "chunks_resumed", "chunks_written")},
        "resumed_equals_uninterrupted": equal,
        "all_arrays_equal": all(equal.values()),
        "verify": verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else verify.stderr.strip(),
        "verify_exit_status": verify.returncode,
    })


if __name__ == "__main__":
    main()
