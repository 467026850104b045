"""Read rate of a conversation store against a window store of the same text, per process.

Reads the stores that benchmarks/conversation_bench.py left in --work (assistant.zarr and
windows.zarr: the same conversations, assistant targets vs fixed windows of their rendering) the
way distill's loader does (whole chunks: input_ids, topk_ids, topk_logprobs, topk_len), --repeats
times, and reports target positions (rows a loss reads) per second and store rows per second.

    python -m benchmarks.conversation_read_bench --work DIR [--repeats 3]

Saves benchmarks/results/conversation_read_bench.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.results import save


def rate(path: Path, repeats: int) -> dict:
    import numpy as np

    from kdstream.storage import open_store

    store = open_store(path)
    keys = ("input_ids", "topk_ids", "topk_logprobs", "topk_len")
    best, targets = float("inf"), 0
    for _ in range(repeats):
        start, targets = time.perf_counter(), 0
        for a in range(0, len(store), store.chunk_rows):
            rows = store.read(a, min(a + store.chunk_rows, len(store)), keys)
            targets += int(np.count_nonzero(rows["topk_len"]))
        best = min(best, time.perf_counter() - start)
    return {"examples": len(store), "target_positions": targets, "seconds": round(best, 3),
            "target_positions_per_s": round(targets / best, 1), "examples_per_s": round(len(store) / best, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.work)
    conv, win = rate(work / "assistant.zarr", args.repeats), rate(work / "windows.zarr", args.repeats)
    save("conversation_read_bench", {"conversations": conv, "windows": win,
                                     "conversation_over_window_positions_per_s":
                                         round(conv["target_positions_per_s"] / win["target_positions_per_s"], 3)})


if __name__ == "__main__":
    main()
