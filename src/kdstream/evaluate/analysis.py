"""Memorization analysis after extract-eval: per-example features, set comparison, classifier.

Three library calls behind ``kdstream features | compare | classify``:

- ``run_features``: one fp32 transformers pass of a model over a teacher store's examples ->
  ``features.parquet`` (one row per example_id: ppl, suffix_ppl, min_k, teacher_kl against the
  store's top-k, zlib_entropy, zlib_ratio, and the teacher's own perplexity read from the store).
- ``compare_evals`` / ``write_comparison``: memorized sets of teacher, CE baseline and student
  (three extract-eval directories), the paper's overlaps and all seven Venn regions.
- ``run_classify``: the paper's predictor of student memorization (teacher ppl, baseline ppl,
  teacher–baseline KL, zlib entropy) and, with ``filter``, the exclude list ``distill --exclude``
  reads.

Outputs are written under ``OUT.partial`` and renamed at the end (comparison files one by one,
each via a temporary name), so a crash never leaves an output that looks finished.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kdstream.errors import KdError
from kdstream.options import require, save_options
from kdstream.outputs import fresh_partial, publish

if TYPE_CHECKING:
    import pandas as pd

    from kdstream.evaluate.classifier import ClassifyOptions

FEATURES_FILE = "features.parquet"
SUMMARY_FILE = "summary.json"  # written last by `features` (and by extract-eval): its absence = incomplete
RESULTS_FILE = "results.parquet"  # extract-eval's per-example results
CLASSIFICATION_FILE = "classification.json"  # written last by `classify`
EXCLUDE_FILE = "exclude.txt"
TABLE_FILE = "table.parquet"  # the classifier's input table (+ label, + filter score)

# Columns of features.parquet, in order (example_id first).
FEATURE_COLUMNS = (
    "example_id", "ppl", "suffix_ppl", "min_k", "teacher_kl", "teacher_ppl_from_store", "zlib_entropy", "zlib_ratio",
)
_STORE_KEYS = ("input_ids", "example_id", "topk_ids", "topk_logprobs", "target_logprob")


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


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(jsonable(data), indent=2) + "\n")


# ---- features ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeaturesOptions:
    """Score every example of a teacher store with one model (fp32, transformers)."""

    model: str  # HF model directory; must share the store's tokenizer
    logits_store: str  # teacher store (path or fsspec URL): examples + the teacher's top-k
    out: str  # directory for features.parquet, options.yaml, summary.json
    prefix_len: int = 50  # suffix_ppl covers tokens [prefix_len, prefix_len + suffix_len)
    suffix_len: int = 50
    batch_size: int = 16  # examples per forward pass
    max_examples: int | None = None  # only the first N examples of the store
    overwrite: bool = False

    def __post_init__(self) -> None:
        require(bool(self.model) and bool(self.logits_store) and bool(self.out),
                "pass --model DIR, --logits-store STORE and --out DIR")
        require(isinstance(self.prefix_len, int) and self.prefix_len >= 1, f"--prefix-len {self.prefix_len} must be at least 1")
        require(isinstance(self.suffix_len, int) and self.suffix_len >= 1, f"--suffix-len {self.suffix_len} must be at least 1")
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, f"--batch-size {self.batch_size} must be at least 1")
        require(self.max_examples is None or (isinstance(self.max_examples, int) and self.max_examples >= 1),
                f"--max-examples {self.max_examples} must be at least 1")


def _load_scoring_model(opts: FeaturesOptions, store):
    """(model in eval mode, fp32; tokenizer) after every check that needs no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from kdstream.data import load_tokenizer, tokenizer_fingerprint
    from kdstream.model_files import check_model_dir, model_config

    model_dir = check_model_dir(opts.model, "scored")
    if not any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise KdError(f"model {model_dir} has no tokenizer files: save the teacher's tokenizer with it "
                      "(features decode the text and must check it matches the store's)")
    tokenizer = load_tokenizer(model_dir)
    if tokenizer_fingerprint(tokenizer)["sha256"] != store.attrs.get("tokenizer", {}).get("sha256"):
        raise KdError(f"the tokenizer of {model_dir} differs from the store's ({opts.logits_store}): "
                      "score a model that shares the teacher's tokenizer")
    config = model_config(model_dir)
    vocab = config.get("vocab_size")
    if vocab is not None and int(vocab) < store.vocab_size:
        raise KdError(f"model {model_dir} has {vocab} output classes, fewer than the store's vocabulary "
                      f"({store.vocab_size}): score a model built for the teacher's vocabulary")
    max_pos = config.get("max_position_embeddings")
    if max_pos and int(max_pos) < store.seq_len:
        raise KdError(f"examples of {store.seq_len} tokens exceed the context of {model_dir} ({max_pos}): "
                      "use a store with shorter --seq-len")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return model, tokenizer


def run_features(opts: FeaturesOptions) -> dict:
    """Write ``features.parquet`` (one row per example), ``options.yaml`` and ``summary.json``
    (last) into ``opts.out``; return the summary.

    Columns (``FEATURE_COLUMNS``): ppl (tokens 1..L-1), suffix_ppl (the extraction suffix), min_k
    (Min-K% Prob, k = 0.2), teacher_kl (mean over positions of KL(teacher ‖ model) on the store's
    top-k + tail; ≈ 0 for the teacher itself, the paper's teacher–baseline KL for the baseline),
    teacher_ppl_from_store (exp(−mean target_logprob): the teacher's perplexity, no model),
    zlib_entropy (bytes of the zlib-compressed decoded text) and zlib_ratio (log ppl / zlib).
    The store is read whole chunks at a time (``store.chunk_rows`` rows), never row by row.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdstream.evaluate.features import model_features, perplexity, text_features, zlib_ratio
    from kdstream.progress import progress
    from kdstream.storage import open_store

    out = Path(opts.out)
    if (out / SUMMARY_FILE).exists() and not opts.overwrite:
        raise KdError(f"{out} already holds features: pass --overwrite to replace them")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SUMMARY_FILE).exists())):
        raise KdError(f"--out {out} exists and is not a features directory: choose another directory")
    store = open_store(opts.logits_store)
    if opts.prefix_len + opts.suffix_len > store.seq_len:
        raise KdError(f"--prefix-len {opts.prefix_len} + --suffix-len {opts.suffix_len} exceeds the example length "
                      f"{store.seq_len} of {opts.logits_store}: shorten them")
    model, tokenizer = _load_scoring_model(opts, store)
    n = len(store) if opts.max_examples is None else min(len(store), opts.max_examples)
    if n == 0:
        raise KdError(f"store {opts.logits_store} holds no examples: precompute a store with examples")

    columns: dict[str, list[np.ndarray]] = {c: [] for c in FEATURE_COLUMNS}
    start_time = time.perf_counter()
    with progress(n, "features", unit="seq") as bar:
        for start in range(0, n, store.chunk_rows):
            rows = store.read(start, min(start + store.chunk_rows, n), _STORE_KEYS)
            f = model_features(model, rows["input_ids"], prefix_len=opts.prefix_len, suffix_len=opts.suffix_len,
                               topk_ids=rows["topk_ids"], topk_logprobs=rows["topk_logprobs"],
                               batch_size=opts.batch_size)
            zlib_bytes = text_features(tokenizer, rows["input_ids"])["zlib_entropy"]
            columns["example_id"].append(rows["example_id"])
            for name in ("ppl", "suffix_ppl", "min_k", "teacher_kl"):
                columns[name].append(f[name])
            columns["teacher_ppl_from_store"].append(perplexity(rows["target_logprob"]))
            columns["zlib_entropy"].append(zlib_bytes)
            columns["zlib_ratio"].append(zlib_ratio(f["ppl"], zlib_bytes))
            bar.update(len(rows["example_id"]))
    seconds = time.perf_counter() - start_time
    table = {c: np.concatenate(v) for c, v in columns.items()}

    partial = fresh_partial(out)
    pq.write_table(pa.table(table), partial / FEATURES_FILE)
    save_options(opts, partial)
    summary = {
        "model": str(opts.model),
        "logits_store": str(opts.logits_store),
        "examples": int(n),
        "seq_len": store.seq_len,
        "k": store.k,
        "prefix_len": opts.prefix_len,
        "suffix_len": opts.suffix_len,
        "tokenizer_sha256": store.attrs["tokenizer"]["sha256"],
        "mean": {c: float(np.mean(table[c])) for c in FEATURE_COLUMNS if c != "example_id"},
        "median": {c: float(np.median(table[c])) for c in FEATURE_COLUMNS if c != "example_id"},
        "seconds": round(seconds, 3),
        "sequences_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }
    _write_json(partial / SUMMARY_FILE, summary)
    publish(partial, out)
    return jsonable(summary)


# ---- compare ----------------------------------------------------------------------------------

_ROLES = ("teacher", "baseline", "student")
VENN_REGIONS = (  # (key, markdown label)
    ("teacher_only", "teacher only"),
    ("baseline_only", "baseline only"),
    ("student_only", "student only"),
    ("teacher_baseline_only", "teacher ∩ baseline, not student"),
    ("teacher_student_only", "teacher ∩ student, not baseline"),
    ("baseline_student_only", "baseline ∩ student, not teacher"),
    ("all_three", "teacher ∩ baseline ∩ student"),
)


def _eval_results(eval_dir: str | Path, role: str) -> Path:
    """Path of an extract-eval directory's results.parquet; KdError naming the fix otherwise."""
    d = Path(eval_dir)
    if not d.is_dir():
        raise KdError(f"{role} evaluation {d} not found: run `kdstream extract-eval --out {d}` first or fix the path")
    if not (d / RESULTS_FILE).is_file() or not (d / SUMMARY_FILE).is_file():
        raise KdError(f"{role} evaluation {d} has no {RESULTS_FILE} and {SUMMARY_FILE} (unfinished or not an "
                      "extract-eval directory): rerun extract-eval with --out there")
    return d / RESULTS_FILE


def _eval_ids(results: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    return pq.read_table(results, columns=["example_id"]).column("example_id").to_numpy()


def venn_regions(teacher: set[int], baseline: set[int], student: set[int]) -> dict[str, int]:
    """Sizes of the seven disjoint regions of the three memorized sets (they sum to the union)."""
    t, b, s = teacher, baseline, student
    return {
        "teacher_only": len(t - b - s),
        "baseline_only": len(b - t - s),
        "student_only": len(s - t - b),
        "teacher_baseline_only": len((t & b) - s),
        "teacher_student_only": len((t & s) - b),
        "baseline_student_only": len((b & s) - t),
        "all_three": len(t & b & s),
    }


def compare_evals(teacher_dir: str | Path, baseline_dir: str | Path, student_dir: str | Path) -> dict:
    """Compare what teacher, CE baseline and student memorized (three extract-eval directories).

    Returns ``compare.compare_sets``'s dict (counts, rates, the paper's overlaps; its
    ``teacher_only`` is teacher ∖ baseline) plus ``venn`` (the seven disjoint regions,
    ``VENN_REGIONS``), ``union``, ``student_memorized_by_both_others`` (share of the student's set
    also memorized by teacher and baseline; NaN when the student memorized nothing) and ``evals``
    (the directories). The three must cover the same example ids.
    """
    from kdstream.evaluate.compare import compare_sets, memorized_ids

    dirs = dict(zip(_ROLES, (teacher_dir, baseline_dir, student_dir)))
    results = {role: _eval_results(d, role) for role, d in dirs.items()}
    ids = {role: _eval_ids(p) for role, p in results.items()}
    for role, values in ids.items():
        if len(np.unique(values)) != len(values):
            raise KdError(f"{role} evaluation {dirs[role]} repeats example ids: rerun extract-eval there")
    ref = set(ids["teacher"].tolist())
    for role in ("baseline", "student"):
        if set(ids[role].tolist()) != ref:
            raise KdError(f"{role} evaluation {dirs[role]} covers other examples than the teacher's "
                          f"({len(ids[role])} vs {len(ref)}): evaluate all three on the same store and --max-examples")
    sets = {role: memorized_ids(d)[0] for role, d in dirs.items()}
    t, b, s = sets["teacher"], sets["baseline"], sets["student"]
    cmp = compare_sets(t, b, s, len(ref))
    cmp["venn"] = venn_regions(t, b, s)
    cmp["union"] = len(t | b | s)
    cmp["student_memorized_by_both_others"] = len(s & t & b) / len(s) if s else float("nan")
    cmp["evals"] = {role: str(d) for role, d in dirs.items()}
    return cmp


def format_comparison(cmp: dict) -> str:
    """Markdown: ``compare.format_table`` followed by the Venn regions."""
    from kdstream.evaluate.compare import format_table

    share = cmp["student_memorized_by_both_others"]
    lines = [format_table(cmp), "", "| Venn region (exclusive) | count |", "|---|---|"]
    lines += [f"| {label} | {cmp['venn'][key]} |" for key, label in VENN_REGIONS]
    lines += [
        f"| union | {cmp['union']} |",
        "",
        "share of the student's memorized examples also memorized by teacher and baseline: "
        + ("n/a" if math.isnan(share) else f"{100 * share:.1f}%"),
    ]
    return "\n".join(lines)


def write_comparison(cmp: dict, out_dir: str | Path) -> dict[str, str]:
    """Write ``comparison.json`` and ``comparison.md`` into ``out_dir`` (created if needed), each
    under a temporary name then renamed; other files there are left alone. -> their paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KdError(f"--out {out} is a file: pass a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in (("comparison.json", json.dumps(jsonable(cmp), indent=2) + "\n"),
                       ("comparison.md", format_comparison(cmp) + "\n")):
        tmp = out / (name + ".partial")
        tmp.write_text(text)
        tmp.replace(out / name)
        paths[name] = str(out / name)
    return paths


# ---- classify ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassifyRunOptions:
    """Predict the student's memorization from teacher and baseline features (the paper's setup)."""

    student_eval: str  # extract-eval directory of the student: labels = exact_match
    teacher_features: str  # `features` directory of the teacher (its ppl)
    baseline_features: str  # `features` directory of the CE baseline (its ppl and teacher_kl)
    out: str  # directory for classification.json, options.yaml, table.parquet, [exclude.txt]
    repeats: int = 100
    seed: int = 0
    negative_ratio: float = 3
    test_size: float = 0.3
    filter: bool = False  # also fit the filter on every example and write exclude.txt
    target_recall: float = 0.95  # share of memorized examples the filter must flag

    def __post_init__(self) -> None:
        require(bool(self.student_eval) and bool(self.teacher_features) and bool(self.baseline_features)
                and bool(self.out), "pass --student-eval, --teacher-features, --baseline-features and --out")
        require(0.0 < self.target_recall <= 1.0, f"--target-recall {self.target_recall} must be in (0, 1]")
        self.classify_options()  # validates repeats, seed, negative_ratio, test_size

    def classify_options(self) -> ClassifyOptions:
        from kdstream.evaluate.classifier import ClassifyOptions

        return ClassifyOptions(negative_ratio=self.negative_ratio, test_size=self.test_size,
                               repeats=self.repeats, seed=self.seed)


def _read_features(features_dir: str | Path, role: str, columns: list[str]) -> pd.DataFrame:
    import pyarrow.parquet as pq

    d = Path(features_dir)
    if not d.is_dir():
        raise KdError(f"{role} features {d} not found: run `kdstream features --out {d}` first or fix the path")
    if not (d / FEATURES_FILE).is_file() or not (d / SUMMARY_FILE).is_file():
        raise KdError(f"{role} features {d} has no {FEATURES_FILE} and {SUMMARY_FILE} (unfinished or not a "
                      "features directory): rerun `kdstream features` with --out there")
    have = pq.read_schema(d / FEATURES_FILE).names
    missing = [c for c in ["example_id", *columns] if c not in have]
    if missing:
        raise KdError(f"{role} features {d / FEATURES_FILE} lacks columns {missing}: recompute it with `kdstream features`")
    frame = pq.read_table(d / FEATURES_FILE, columns=["example_id", *columns]).to_pandas()
    if frame["example_id"].duplicated().any():
        raise KdError(f"{role} features {d} repeats example ids: recompute it with `kdstream features`")
    return frame.set_index("example_id")


def classification_table(student_eval: str | Path, teacher_features: str | Path,
                         baseline_features: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The paper's feature table, one row per example the student was evaluated on, in the
    eval's order -> (DataFrame with example_id + ``classifier.DEFAULT_FEATURES``, (N,) bool labels).

    teacher_ppl: the teacher's ``ppl``; baseline_ppl: the baseline's ``ppl``; teacher_baseline_kl:
    the baseline's ``teacher_kl`` (KL(teacher ‖ baseline) on the store's top-k); zlib_entropy: from
    the teacher's features; label: the student's exact_match.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    results = _eval_results(student_eval, "student")
    have = pq.read_schema(results).names
    if "exact_match" not in have or "example_id" not in have:
        raise KdError(f"{results} lacks example_id / exact_match: rerun extract-eval for the student")
    ev = pq.read_table(results, columns=["example_id", "exact_match"]).to_pandas()
    if ev["example_id"].duplicated().any():
        raise KdError(f"student evaluation {student_eval} repeats example ids: rerun extract-eval there")
    teacher = _read_features(teacher_features, "teacher", ["ppl", "zlib_entropy"])
    baseline = _read_features(baseline_features, "baseline", ["ppl", "teacher_kl"])
    ids = ev["example_id"].to_numpy()
    for role, frame, d in (("teacher", teacher, teacher_features), ("baseline", baseline, baseline_features)):
        absent = ~np.isin(ids, frame.index.to_numpy())
        if absent.any():
            raise KdError(f"{int(absent.sum())} of the {len(ids)} examples of the student evaluation (e.g. id "
                          f"{int(ids[absent][0])}) have no {role} features in {d}: compute features on the same "
                          "store and --max-examples as extract-eval")
    table = pd.DataFrame({
        "example_id": ids,
        "teacher_ppl": teacher.loc[ids, "ppl"].to_numpy(np.float64),
        "baseline_ppl": baseline.loc[ids, "ppl"].to_numpy(np.float64),
        "teacher_baseline_kl": baseline.loc[ids, "teacher_kl"].to_numpy(np.float64),
        "zlib_entropy": teacher.loc[ids, "zlib_entropy"].to_numpy(np.float64),
    })
    return table, ev["exact_match"].to_numpy().astype(bool)


def run_classify(opts: ClassifyRunOptions) -> dict:
    """Repeated logistic-regression evaluation (``classifier.run_classifier``) of how well teacher
    ppl, baseline ppl, teacher–baseline KL and zlib entropy predict the student's memorization.

    With ``filter``: ``classifier.fit_filter`` on every example; ``exclude.txt`` (the flagged ids,
    for ``distill --exclude``) and the threshold, target and cross-validated expected recall go
    into the result's ``filter``. Writes ``table.parquet`` (the inputs, label, filter score),
    ``options.yaml`` and ``classification.json`` (last) into ``opts.out``; returns the result.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdstream.evaluate.classifier import fit_filter, run_classifier, write_exclude_list

    out = Path(opts.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / CLASSIFICATION_FILE).exists())):
        raise KdError(f"--out {out} exists and is not a classify output: choose another directory")
    table, labels = classification_table(opts.student_eval, opts.teacher_features, opts.baseline_features)
    copts = opts.classify_options()
    result = {
        "student_eval": str(opts.student_eval),
        "teacher_features": str(opts.teacher_features),
        "baseline_features": str(opts.baseline_features),
        "examples": int(len(labels)),
        **run_classifier(table, labels, copts),
        "filter": None,
    }
    saved = table.assign(memorized=labels)
    partial = fresh_partial(out)
    if opts.filter:
        fr = fit_filter(table, labels, copts, target_recall=opts.target_recall)
        write_exclude_list(fr.flagged_ids, partial / EXCLUDE_FILE)
        saved = saved.assign(filter_score=fr.scores, flagged=fr.scores >= fr.threshold)
        result["filter"] = {
            "exclude_file": str(out / EXCLUDE_FILE),
            "threshold": fr.threshold,
            "target_recall": fr.target_recall,
            "expected_recall": fr.expected_recall,
            "train_recall": fr.train_recall,
            "cv_folds": fr.cv_folds,
            "flagged": int(len(fr.flagged_ids)),
            "flagged_share": len(fr.flagged_ids) / len(labels),
            "coefficients": fr.coefficients,
            "intercept": fr.intercept,
        }
    pq.write_table(pa.Table.from_pandas(saved, preserve_index=False), partial / TABLE_FILE)
    save_options(opts, partial)
    _write_json(partial / CLASSIFICATION_FILE, result)
    publish(partial, out)
    return jsonable(result)
