"""Why the miniature's classifier gives zlib entropy a positive coefficient (the paper's is
negative): per seed of a finished study (--work, as `study_bench` or `kdstream reproduce` leaves
it), the zlib entropy, the text's length in bytes and zlib bytes per text byte of the windows each
model memorized vs the rest, how many of each model's windows are among the tenth that compress
best per byte, and the classifier refitted with the text's length beside the paper's four
features (same protocol, same seed; where the study could fit one), to see what zlib entropy says
once length is held fixed.

The windows are the study's (a fixed number of teacher tokens, decoded from the teacher's store
with its tokenizer, as `kdstream features` decodes them); the labels, the seed's eval results.

    python -m benchmarks.zlib_length_bench --work W [--repeats 100] [--name zlib_length_bench]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.results import save
from kdstream.analysis.classify import DEFAULT_FEATURES, ClassifyOptions, run_classifier
from kdstream.analysis.compare import memorized_ids
from kdstream.analysis.features import text_features
from kdstream.storage import open_store
from kdstream.text.tokenizers import load_tokenizer

ROLES = ("teacher", "baseline", "student")


def window_medians(rows) -> dict:
    """Medians over a frame of windows (columns zlib_entropy, text_bytes): zlib bytes, text bytes,
    zlib per text byte (only the count for no windows: a model that memorized nothing has none)."""
    if rows.empty:
        return {"windows": 0}
    return {"windows": int(len(rows)), "zlib_entropy": float(rows["zlib_entropy"].median()),
            "text_bytes": float(rows["text_bytes"].median()),
            "zlib_per_byte": round(float((rows["zlib_entropy"] / rows["text_bytes"]).median()), 4)}


def _medians(frame, ids: set[int]) -> dict:
    """``window_medians`` of the windows in ``ids`` vs the rest."""
    inside = frame.index.isin(sorted(ids))
    return {"memorized": window_medians(frame[inside]), "not_memorized": window_medians(frame[~inside])}


def _most_compressible(frame, sets: dict[str, set[int]]) -> dict:
    """How many of each model's memorized windows are among the tenth of windows that compress
    best per byte: the paper's "easy, low-entropy" text, whatever the tokenizer's bytes per token."""
    per_byte = frame["zlib_entropy"] / frame["text_bytes"]
    low = set(frame.index[per_byte <= per_byte.quantile(0.1)].tolist())
    return {"windows": len(low), "memorized": {r: len(s & low) for r, s in sets.items()}}


def _fits(d: Path, frame, repeats: int, seed: int) -> dict | None:
    """The classifier refitted without and with the text's length; None when the study left the
    seed's classifier not testable (no classify/table.parquet: too few student windows)."""
    import pandas as pd

    if not (d / "classify" / "table.parquet").is_file():
        return None
    table = pd.read_parquet(d / "classify" / "table.parquet")  # the classifier's own input and label
    assert np.array_equal(table["zlib_entropy"].to_numpy(), frame.loc[table["example_id"], "zlib_entropy"].to_numpy())
    table["text_bytes"] = frame.loc[table["example_id"], "text_bytes"].to_numpy(np.float64)
    labels = table["memorized"].to_numpy(bool)
    fits = {}
    for name, features in (("paper_four", DEFAULT_FEATURES), ("with_text_bytes", (*DEFAULT_FEATURES, "text_bytes"))):
        res = run_classifier(table, labels, ClassifyOptions(features=features, repeats=repeats, seed=seed))
        fits[name] = {"auc": res["auc"], "coefficients": {k: round(v["mean"], 3) for k, v in res["coefficients"].items()}}
    return fits


def _seed(d: Path, repeats: int, seed: int) -> dict:
    import pandas as pd

    store = open_store(str(d / "teacher.zarr"))
    rows = store.read(0, len(store), ("input_ids", "example_id"))
    text = text_features(load_tokenizer(str(d / "teacher")), rows["input_ids"])
    frame = pd.DataFrame({"zlib_entropy": text["zlib_entropy"], "text_bytes": text["text_bytes"]},
                         index=rows["example_id"])
    sets = {role: memorized_ids(d / "eval" / role)[0] for role in ROLES}
    return {"windows": int(len(frame)), "by_memorized_set": {r: _medians(frame, s) for r, s in sets.items()},
            "most_compressible_tenth": _most_compressible(frame, sets),
            "classifier": _fits(d, frame, repeats, seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a finished study's --out (holds seed-S/ directories)")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--name", default="zlib_length_bench")
    args = parser.parse_args()
    seeds = sorted(Path(args.work).glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
    figures: dict = {"work": args.work, "seeds": {}}
    for d in seeds:
        figures["seeds"][d.name] = _seed(d, args.repeats, int(d.name.split("-")[1]))
    coef = [f["classifier"]["with_text_bytes"]["coefficients"]["zlib_entropy"]
            for f in figures["seeds"].values() if f["classifier"] is not None]
    if coef:
        figures["zlib_coefficient_with_text_bytes"] = {"mean": round(float(np.mean(coef)), 3), "values": coef}
    save(args.name, json.loads(json.dumps(figures)))


if __name__ == "__main__":
    main()
