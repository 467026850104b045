"""Read rate of a conversation store against a window store of the same text, per process.

Reads the stores that benchmarks/conversation_bench.py left in --work (assistant.zarr and
windows.zarr: the same conversations, assistant targets vs fixed windows of their rendering)
whole chunk by whole chunk, --repeats times, two ways: ``read`` (padded rows, as distill's loader
reads: input_ids, topk_ids, topk_logprobs, topk_len) and ``read_targets`` (the target rows only:
topk_ids, topk_logprobs), and reports target positions (rows a loss reads) per second. Also times
blosc alone on the chunks of topk_index and topk_logprobs (every chunk decompresses whole, padding
included): the most ``read_targets`` can reach on this machine and layout.

    python -m benchmarks.conversation_read_bench --work DIR [--repeats 3]

Saves benchmarks/results/conversation_read_bench.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.results import save


def rate(path: Path, repeats: int, targets_only: bool) -> dict:
    import numpy as np

    from kdstream.storage import open_store

    store = open_store(path)
    best, targets = float("inf"), 0
    for _ in range(repeats):
        start, targets = time.perf_counter(), 0
        for a in range(0, len(store), store.chunk_rows):
            b = min(a + store.chunk_rows, len(store))
            if targets_only:
                targets += len(store.read_targets(a, b, ("topk_ids", "topk_logprobs"))["example"])
            else:
                rows = store.read(a, b, ("input_ids", "topk_ids", "topk_logprobs", "topk_len"))
                targets += int(np.count_nonzero(rows["topk_len"]))
        best = min(best, time.perf_counter() - start)
    return {"examples": len(store), "target_positions": targets, "seconds": round(best, 4),
            "target_positions_per_s": round(targets / best, 1), "examples_per_s": round(len(store) / best, 1)}


def blosc_only(path: Path, repeats: int, targets: int) -> dict:
    """Seconds to blosc-decompress every chunk object of the packed arrays (crc32c trailer cut off,
    docs/store-format.md), best of ``repeats``; and the target positions per second that leaves."""
    from numcodecs import blosc

    objects = [f.read_bytes()[:-4] for name in ("topk_index", "topk_logprobs")
               for f in sorted((path / name / "c").rglob("*")) if f.is_file()]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for body in objects:
            blosc.decompress(body)
        best = min(best, time.perf_counter() - start)
    return {"chunk_objects": len(objects), "decompressed_bytes": sum(int.from_bytes(b[4:8], "little") for b in objects),
            "seconds": round(best, 4), "target_positions_per_s_ceiling": round(targets / best, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.work)
    figures = {}
    for name, store in (("conversations", "assistant.zarr"), ("windows", "windows.zarr")):
        padded, targets = rate(work / store, args.repeats, False), rate(work / store, args.repeats, True)
        figures[name] = {"read": padded, "read_targets": targets,
                         "blosc_only": blosc_only(work / store, args.repeats, targets["target_positions"])}
    figures["conversation_over_window_positions_per_s"] = round(
        figures["conversations"]["read_targets"]["target_positions_per_s"]
        / figures["windows"]["read_targets"]["target_positions_per_s"], 3)
    save("conversation_read_bench", figures)


if __name__ == "__main__":
    main()
