"""Where the bytes of a conversation store go: an assistant-target store against an all-positions
store of the same conversations, array by array (the stores conversation_bench.py leaves in --work).

The issue's bound, (target positions ÷ all positions) × all-positions bytes, prices every row
alike. Split each store into the arrays it keeps per token or per example (the same in both:
input_ids, topk_len, length, example_id, doc_index, the manifest) and those it keeps per target
row (the top-k arrays, the id tables, the target's code and rank). Then, assuming an assistant
row costs what it costs in the assistant store whichever rows sit beside it, the all-positions
store's other rows (system prompt, template, user turns) cost the rest; the bound holds only if
an assistant row costs at most ``needed`` bytes, and the figures say what it costs.

    python -m benchmarks.conversation_bytes_bench --work DIR

Saves benchmarks/results/conversation_bytes.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.results import save

# arrays kept per token or per example: the same bytes in both stores (the rows' arrays are the rest)
FIXED = ("input_ids", "topk_len", "length", "example_id", "doc_index", "manifest_crc32c", "chunk_done")
NOT_COUNTED = ("tokenizer",)  # the teacher's tokenizer files: not the logits, left out of both


def array_bytes(store: Path) -> dict[str, int]:
    """Bytes on disk of each top-level array of a local store (every file under it)."""
    out = {}
    for entry in sorted(store.iterdir()):
        if entry.is_dir() and entry.name not in NOT_COUNTED:
            out[entry.name] = sum(os.path.getsize(Path(root) / f) for root, _, files in os.walk(entry) for f in files)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="conversation_bench's --work (assistant.zarr, all.zarr)")
    args = ap.parse_args()
    stores, rows = {}, {}
    for name in ("assistant", "all"):
        path = Path(args.work) / f"{name}.zarr"
        info = json.loads(subprocess.run([sys.executable, "-m", "kdstream", "store", "info", "--json", str(path)],
                                         capture_output=True, text=True, check=True).stdout)["size"]
        arrays = array_bytes(path)
        fixed = sum(v for k, v in arrays.items() if k in FIXED)
        per_row = sum(v for k, v in arrays.items() if k not in FIXED)
        rows[name] = info["target_positions"]
        stores[name] = {"arrays": arrays, "fixed_bytes": fixed, "row_bytes": per_row,
                        "rows": info["target_positions"], "bytes_per_row": round(per_row / info["target_positions"], 1)}
    a, b = stores["assistant"], stores["all"]
    share = a["rows"] / b["rows"]
    bound = share * (b["fixed_bytes"] + b["row_bytes"])
    other_rows = b["rows"] - a["rows"]
    save("conversation_bytes", {
        "stores": stores,
        "target_share": round(share, 4),
        "bound_plus_5pct": round(1.05 * bound),
        "assistant_total": a["fixed_bytes"] + a["row_bytes"],
        # what an assistant row may cost for the assistant store to meet the bound (+5%)
        "needed_bytes_per_assistant_row": round((1.05 * bound - a["fixed_bytes"]) / a["rows"], 1),
        "assistant_bytes_per_row": a["bytes_per_row"],
        # the all-positions store's other rows, with the assistant rows at their own cost
        "other_rows": other_rows,
        "other_bytes_per_row": round((b["row_bytes"] - a["row_bytes"]) / other_rows, 1),
    })


if __name__ == "__main__":
    main()
