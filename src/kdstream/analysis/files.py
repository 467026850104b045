"""The output directories of the analysis commands, their file names, and their checked readers.

Every analysis file name is defined here once (extract-eval's own in ``extract/results.py``).
An extract-eval directory holds ``results.parquet`` (one row per example) and ``summary.json``
(written last), with ``--features`` also a ``features/`` directory; a ``features`` directory
``features.parquet`` and ``summary.json``; a ``compare`` directory ``comparison.json`` and
``comparison.md``; a ``classify`` directory ``classification.json`` (last), ``table.parquet``,
``heldout.parquet`` and, with ``--filter``, ``exclude.txt``; a ``report`` directory
``report.md``, ``report.json`` and the ``PLOTS``. Each reader raises a one-line ``KdError``
naming the command that makes the missing file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kdstream.errors import KdError
from kdstream.extract.results import RESULTS_FILE, SUMMARY_FILE

if TYPE_CHECKING:
    import pandas as pd

# SUMMARY_FILE is written last by `features` too (as by extract-eval): its absence = incomplete.
FEATURES_FILE = "features.parquet"
FEATURES_DIR = "features"  # extract-eval --features: a `kdstream features` directory inside the evaluation
COMPARISON_JSON, COMPARISON_MD = "comparison.json", "comparison.md"  # `compare`
CLASSIFICATION_FILE = "classification.json"  # written last by `classify`
EXCLUDE_FILE = "exclude.txt"
TABLE_FILE = "table.parquet"  # the classifier's input table (+ label, + filter score)
HELDOUT_FILE = "heldout.parquet"  # classify: held-out (repeat, example_id, label, score) of every repeat
REPORT_MD, REPORT_JSON = "report.md", "report.json"  # `report`
PLOTS = {"venn": "venn.png", "zlib": "zlib_entropy.png", "roc": "roc.png", "prefix_len": "rate_by_prefix_len.png"}

# Columns of features.parquet, in order (example_id first).
FEATURE_COLUMNS = (
    "example_id", "ppl", "bits_per_byte", "suffix_ppl", "min_k", "teacher_kl", "teacher_ppl_from_store", "zlib_entropy",
    "zlib_ratio",
    "text_bytes",
)
# features.parquet of a model scored across tokenizers (features_cross.py) adds this column
LLR_COLUMN = "teacher_llr_per_byte"


def jsonable(value: Any) -> Any:
    """``value`` with NaN / ±inf floats replaced by None (strict JSON), numpy scalars as Python."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(jsonable(data), indent=2) + "\n")


def read_json(path: Path, what: str, fix: str) -> dict:
    """A JSON object from ``path``; KdError naming ``what`` and ``fix`` when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KdError(f"{what} {path} cannot be read ({exc.__class__.__name__}): {fix}") from None
    if not isinstance(data, dict):
        raise KdError(f"{what} {path} is not a JSON object: {fix}")
    return data


def _finished_file(directory: str | Path, role: str, what: str, name: str, command: str, kind: str,
                   rerun: str) -> Path:
    """``directory/name`` of a finished ``command`` run (its SUMMARY_FILE is written last);
    KdError naming the fix otherwise."""
    d = Path(directory)
    if not d.is_dir():
        raise KdError(f"{role} {what} {d} not found: run `kdstream {command} --out {d}` first or fix the path")
    if not (d / name).is_file() or not (d / SUMMARY_FILE).is_file():
        raise KdError(f"{role} {what} {d} has no {name} and {SUMMARY_FILE} (unfinished or not {kind}): "
                      f"{rerun} with --out there")
    return d / name


def eval_results(eval_dir: str | Path, role: str) -> Path:
    """Path of an extract-eval directory's results.parquet; KdError naming the fix otherwise."""
    return _finished_file(eval_dir, role, "evaluation", RESULTS_FILE, "extract-eval",
                          "an extract-eval directory", "rerun extract-eval")


def eval_summary(eval_dir: str | Path, role: str) -> dict:
    """An extract-eval directory's summary.json (checked like ``eval_results``)."""
    d = eval_results(eval_dir, role).parent
    return read_json(d / SUMMARY_FILE, f"{role} evaluation summary", "rerun extract-eval with --out there")


def features_path(features_dir: str | Path, role: str) -> Path:
    """Path of a features directory's features.parquet; KdError naming the fix otherwise."""
    return _finished_file(features_dir, role, "features", FEATURES_FILE, "features",
                          "a features directory", "rerun `kdstream features`")


def read_features(features_dir: str | Path, role: str, columns: list[str] | None = None) -> pd.DataFrame:
    """features.parquet indexed by example_id, with ``columns`` (all of them when None)."""
    import pyarrow.parquet as pq

    path = features_path(features_dir, role)
    have = pq.read_schema(path).names
    columns = [c for c in have if c != "example_id"] if columns is None else columns
    missing = [c for c in ["example_id", *columns] if c not in have]
    if missing:
        raise KdError(f"{role} features {path} lacks columns {missing}: recompute it with `kdstream features`")
    frame = pq.read_table(path, columns=["example_id", *columns]).to_pandas()
    if frame["example_id"].duplicated().any():
        raise KdError(f"{role} features {Path(features_dir)} repeats example ids: recompute it with `kdstream features`")
    return frame.set_index("example_id")
