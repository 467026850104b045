"""``kdstream eval merge``: join the shards of ``extract-eval --num-workers N`` into one
evaluation directory, identical to what a single run writes (timings aside)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from kdstream.errors import KdError
from kdstream.extract.results import (
    RESULTS_FILE,
    SUMMARY_FILE,
    SWEEP_FILE,
    write_eval,
)
from kdstream.options import OPTIONS_FILE
from kdstream.outputs import check_output, fresh_partial, publish

# Options that may differ between shards of one evaluation.
PER_SHARD = ("out", "worker_index", "overwrite")


def _read_shard(d: Path) -> tuple[dict, dict]:
    if not (d / SUMMARY_FILE).is_file() or not (d / OPTIONS_FILE).is_file():
        raise KdError(f"{d} is not a finished extract-eval directory (no {SUMMARY_FILE}): rerun that worker")
    return json.loads((d / SUMMARY_FILE).read_text()), yaml.safe_load((d / OPTIONS_FILE).read_text())


def check_coverage(ranges: list[tuple[int, int, Path]], total: int) -> None:
    """The shards' example ranges must tile [0, total) exactly once; KdError naming the gap/overlap."""
    pos, prev = 0, None
    for start, stop, d in sorted(ranges, key=lambda r: (r[0], r[1])):
        if start < pos:
            raise KdError(f"shards {prev} and {d} overlap (examples {start}..{min(pos, stop) - 1}): "
                          "pass each worker's directory once")
        if start > pos:
            raise KdError(f"examples {pos}..{start - 1} of {total} are in no shard: run the missing "
                          "--worker-index and pass its directory too")
        pos, prev = stop, d
    if pos != total:
        raise KdError(f"examples {pos}..{total - 1} of {total} are in no shard: run the missing "
                      "--worker-index and pass its directory too")


def merge_shards(shard_dirs: list[str], out: str, overwrite: bool = False) -> dict:
    """Check the shards share every option and cover all examples exactly once; concatenate
    their tables (sorted by example_id) and recompute the summary. Returns the summary."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not shard_dirs:
        raise KdError("eval merge needs at least one shard directory")
    out_dir = Path(out)
    check_output(out_dir, "extract-eval", replace=overwrite)
    dirs = [Path(d) for d in shard_dirs]
    shards = [_read_shard(d) for d in dirs]
    ref_summary, ref_opts = shards[0]
    for d, (summary, opts) in zip(dirs[1:], shards[1:]):
        diff = sorted(k for k in set(opts) | set(ref_opts)
                      if k not in PER_SHARD and opts.get(k) != ref_opts.get(k))
        if diff:
            raise KdError(f"shards {dirs[0]} and {d} were run with different options ({', '.join(diff)}): "
                          "merge shards of one evaluation only")
        if summary.get("store_identity") != ref_summary.get("store_identity"):
            raise KdError(f"shards {dirs[0]} and {d} read different stores (store_identity differs): "
                          "merge shards of one evaluation only")
    total = ref_summary["total_examples"]
    check_coverage([(*s["example_range"], d) for d, (s, _) in zip(dirs, shards)], total)

    results = pa.concat_tables([pq.read_table(d / RESULTS_FILE) for d in dirs])
    results = results.take(pc.sort_indices(results, [("example_id", "ascending")]))
    sweep = pa.concat_tables([pq.read_table(d / SWEEP_FILE) for d in dirs])
    sweep = sweep.take(pc.sort_indices(sweep, [("prefix_len", "ascending"), ("example_id", "ascending")]))

    seconds = {m: sum(s["seconds_by_method"][m] for s, _ in shards) for m in ref_summary["seconds_by_method"]}
    runs = len(ref_summary["prefix_lens"]) * total
    meta = {k: ref_summary[k] for k in ("model", "logits_store", "prefix_len", "prefix_lens", "suffix_len",
                                         "offset", "method", "backend", "engine")}
    meta.update({k: ref_summary[k] for k in ("mode", "match_on") if k in ref_summary})  # absent before them
    if "conversations" in ref_summary:  # a conversation evaluation: its counts over every shard
        from kdstream.extract.conversation_run import merged_counts

        meta.update(prefix=ref_summary["prefix"], conversations=merged_counts([s["conversations"] for s, _ in shards]))
    meta.update(
        seconds=round(sum(seconds.values()), 3),  # summed over shards: worker-seconds, not wall time
        seconds_by_method={m: round(s, 3) for m, s in seconds.items()},
        sequences_per_s=round(runs / sum(seconds.values()), 1) if sum(seconds.values()) > 0 else None,
        sequences_per_s_by_method={m: round(runs / s, 1) if s > 0 else None for m, s in seconds.items()},
        worker_index=0, num_workers=1, example_range=[0, total], total_examples=total,
        merged_from=[str(d) for d in dirs],
        store_identity=ref_summary.get("store_identity"),
    )
    partial = fresh_partial(out_dir, "extract-eval")
    # the options of the equivalent single run
    opts = {**ref_opts, "out": str(out_dir), "num_workers": 1, "worker_index": 0}
    (partial / OPTIONS_FILE).write_text(yaml.safe_dump(opts, sort_keys=False))
    summary = write_eval(partial, results, sweep, meta, list(ref_summary["memorized_by_method"]))
    publish(partial, out_dir, "extract-eval")
    return summary
