"""Turn per-method verdict arrays into extract-eval's files, and its files into a summary.

Used by ``run_extract_eval`` (one run or one shard) and by ``merge_shards`` (many shards), so a
merged directory is built by exactly the code that builds a single run's.

Files of an evaluation directory:
    results.parquet        one row per example at the primary (first) prefix length
    prefix_sweep.parquet   one row per (example, prefix length), every prefix length
    disagreements.parquet  --method both: rows of the sweep where generate and fast disagree
    options.yaml, summary.json (written last)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kdstream.extract.fast_path import NEAR_TIE

RESULTS_FILE = "results.parquet"
SWEEP_FILE = "prefix_sweep.parquet"
DISAGREEMENTS_FILE = "disagreements.parquet"
SUMMARY_FILE = "summary.json"  # written last: an eval directory without it is incomplete
# kept in results, not in the sweep
LIST_COLUMNS = ("generated_ids", "suffix_ids", "argmax_ids", "generated_bytes", "suffix_bytes")
TF_METHODS = ("fast", "store")  # teacher-forced: they give margins, not generated tokens


def verdict_method(methods: list[str]) -> str:
    """The method whose verdict fills ``exact_match``: greedy generation whenever it ran."""
    return "generate" if "generate" in methods else methods[0]


def prefix_table(example_id: np.ndarray, truth: np.ndarray, per_method: dict[str, dict]):
    """One row per example for one prefix length.

    per_method: "generate" → metrics.match_metrics(...) plus "generated_ids" (S, n);
    "fast" / "store" → fast_path.teacher_forced_metrics(...). Columns: example_id, exact_match,
    frac_matched, prefix_match_len (the verdict method's; frac_matched is the teacher-forced
    share when generate did not run), edit_distance, approx_match, generated_ids (null without
    generate), suffix_ids, <method>_exact_match and <method>_prefix_match_len for every method,
    and with a teacher-forced method margin, near_tie, tf_frac_matched, argmax_ids; with both
    generate and fast, verdicts_differ.

    Judged on bytes (a "generate" entry from run.byte_verdicts, with "skip_reason"): frac_matched,
    prefix_match_len and edit_distance count bytes, generated_ids are the model's own (as many as
    it took to cover the suffix's bytes), and the rows gain skip_reason (null when judged; a
    skipped example has exact_match and approx_match False and null numbers), suffix_bytes and
    generated_bytes.
    """
    import pyarrow as pa

    S = len(example_id)
    main = per_method[verdict_method(list(per_method))]
    gen = per_method.get("generate")
    skipped = None  # (S,) bool for a byte-judged run: examples not judged, their numbers null
    if gen is not None and "skip_reason" in gen:
        skipped = np.array([r is not None for r in gen["skip_reason"]], bool)

    def col(values, type=None):
        return pa.array(values, type, mask=skipped) if skipped is not None else pa.array(values, type)

    cols = {
        "example_id": pa.array(np.asarray(example_id, np.int64)),
        "exact_match": pa.array(main["exact"]),
        "frac_matched": col(main["frac_matched"] if gen is not None else main["tf_frac_matched"]),
        "prefix_match_len": col(main["prefix_match_len"]),
        "edit_distance": col(gen["edit_distance"], pa.int64()) if gen else pa.array([None] * S, pa.int64()),
        "approx_match": pa.array(gen["approx"] if gen else [None] * S, pa.bool_()),
        "generated_ids": pa.array(list(gen["generated_ids"]) if gen else [None] * S, pa.list_(pa.int64())),
        "suffix_ids": pa.array(list(np.asarray(truth, np.int64)), pa.list_(pa.int64())),
    }
    if skipped is not None:
        cols["skip_reason"] = pa.array(list(gen["skip_reason"]), pa.string())
        cols["suffix_bytes"] = pa.array(list(gen["suffix_bytes"]), pa.binary())
        cols["generated_bytes"] = pa.array(list(gen["generated_bytes"]), pa.binary())
    for name, m in per_method.items():
        cols[f"{name}_exact_match"] = pa.array(m["exact"])
        cols[f"{name}_prefix_match_len"] = col(m["prefix_match_len"])
    tf = next((per_method[k] for k in TF_METHODS if k in per_method), None)
    if tf is not None:
        cols["margin"] = pa.array(tf["margin"], pa.float32())
        cols["near_tie"] = pa.array(tf["margin"] < NEAR_TIE)
        cols["tf_frac_matched"] = pa.array(tf["tf_frac_matched"])
        cols["argmax_ids"] = pa.array(list(tf["argmax_ids"]), pa.list_(pa.int64()))
    if gen is not None and "fast" in per_method:
        cols["verdicts_differ"] = pa.array(gen["exact"] != per_method["fast"]["exact"])
    return pa.table(cols)


def sweep_table(tables: dict[int, object]):
    """{prefix_len: prefix_table} → one table with a prefix_len column, without the id lists."""
    import pyarrow as pa

    parts = []
    for p, t in tables.items():
        t = t.drop_columns([c for c in LIST_COLUMNS if c in t.column_names])
        parts.append(t.add_column(1, "prefix_len", pa.array(np.full(t.num_rows, p, np.int64))))
    return pa.concat_tables(parts)


def summarize(results, sweep, methods: list[str]) -> dict:
    """Counts from the tables (pandas frames): what a merge must recompute from its shards."""
    s = {
        "examples": len(results),
        "memorized": int(results["exact_match"].sum()),
        "rate": float(results["exact_match"].mean()),
        "mean_frac_matched": float(results["frac_matched"].mean()),
        "verdict_method": verdict_method(methods),
        "memorized_by_method": {m: int(results[f"{m}_exact_match"].sum()) for m in methods},
    }
    if "generate" in methods:
        s["approx_memorized"] = int(results["approx_match"].sum())
    if "skip_reason" in results:  # judged on bytes: skipped examples count as not extracted
        from kdstream.extract.cross_tokenizer import skip_counts

        s["skipped_examples"] = skip_counts(results["skip_reason"].tolist())
        s["judged"] = int(results["skip_reason"].isna().sum())
    if "margin" in results:
        s["near_tie_margin"] = NEAR_TIE
        s["near_ties"] = int(results["near_tie"].sum())
    if "verdicts_differ" in results:
        s["disagreements"] = int(results["verdicts_differ"].sum())
        s["disagreements_not_near_tie"] = int((results["verdicts_differ"] & ~results["near_tie"]).sum())
    s["by_prefix_len"] = [
        {"prefix_len": int(p), "examples": len(g), "memorized": int(g["exact_match"].sum()),
         "rate": float(g["exact_match"].mean()),
         **({"skipped": int(g["skip_reason"].notna().sum())} if "skip_reason" in g else {})}
        for p, g in sweep.groupby("prefix_len", sort=True)
    ]
    return s


def write_eval(partial: Path, results, sweep, meta: dict, methods: list[str]) -> dict:
    """Write the parquet files and summary.json (last) into ``partial``; return the summary.

    results / sweep: pyarrow tables; meta: run facts (model, lengths, timings, shard) merged
    into the summary after the recomputed counts.
    """
    import pyarrow.parquet as pq

    pq.write_table(results, partial / RESULTS_FILE)
    pq.write_table(sweep, partial / SWEEP_FILE)
    sweep_df = sweep.to_pandas()
    if "verdicts_differ" in sweep.column_names:
        keep = ["example_id", "prefix_len", "generate_exact_match", "fast_exact_match",
                "generate_prefix_match_len", "fast_prefix_match_len", "margin", "near_tie"]
        pq.write_table(sweep.select(keep).filter(sweep["verdicts_differ"]), partial / DISAGREEMENTS_FILE)
    summary = {**summarize(results.to_pandas(), sweep_df, methods), **meta}
    (partial / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary
