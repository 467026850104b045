"""``kdstream classify``: the paper's predictor of student memorization (teacher ppl, baseline
ppl, teacher–baseline KL, zlib entropy) from a student extract-eval and two ``features``
directories and, with ``filter``, the exclude list ``distill --exclude`` reads.

The model itself (sampling, splits, logistic regression, threshold) is in ``classify.py``; this
file joins the directories by example_id and writes the output directory (under
``OUT.partial``, published at the end).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kdstream.analysis.files import (
    CLASSIFICATION_FILE,
    EXCLUDE_FILE,
    HELDOUT_FILE,
    LLR_COLUMN,
    TABLE_FILE,
    eval_results,
    jsonable,
    read_features,
    write_json,
)
from kdstream.errors import KdError
from kdstream.options import option, require, save_options
from kdstream.outputs import check_output, fresh_partial, publish

if TYPE_CHECKING:
    import pandas as pd

    from kdstream.analysis.classify import ClassifyOptions


@dataclass(frozen=True)
class ClassifyRunOptions:
    """Predict the student's memorization from teacher and baseline features (the paper's setup)."""

    student_eval: str = option(help="extract-eval directory of the student (labels: exact match).")
    teacher_features: str = option(help="`kdstream features` directory of the teacher (its ppl).")
    baseline_features: str = option(help="`kdstream features` directory of the CE baseline (its ppl and teacher_kl).")
    out: str = option(help="Directory for classification.json, table.parquet, heldout.parquet, options.yaml "
                           "(exclude.txt).")
    repeats: int = option(100, "Seeded resample / split / fit repeats.")
    seed: int = option(0, "Seed of the resampling, splits and fits.")
    negative_ratio: float = option(3, "Negatives sampled per positive.")
    test_size: float = option(0.3, "Held-out fraction, stratified.")
    filter: bool = option(False, "Also fit on every example and write exclude.txt for distill --exclude.")
    target_recall: float = option(0.95, "With --filter: share of memorized examples the filter must flag.")

    def __post_init__(self) -> None:
        require(bool(self.student_eval) and bool(self.teacher_features) and bool(self.baseline_features)
                and bool(self.out), "pass --student-eval, --teacher-features, --baseline-features and --out")
        require(0.0 < self.target_recall <= 1.0, f"--target-recall {self.target_recall} must be in (0, 1]")
        self.classify_options()  # validates repeats, seed, negative_ratio, test_size

    def classify_options(self) -> ClassifyOptions:
        from kdstream.analysis.classify import ClassifyOptions

        return ClassifyOptions(negative_ratio=self.negative_ratio, test_size=self.test_size,
                               repeats=self.repeats, seed=self.seed)


def classification_table(student_eval: str | Path, teacher_features: str | Path,
                         baseline_features: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The paper's feature table, one row per example the student was evaluated on, in the
    eval's order -> (DataFrame with example_id + ``classify.DEFAULT_FEATURES``, (N,) bool labels).

    teacher_ppl: the teacher's ``ppl``; baseline_ppl: the baseline's ``ppl``; teacher_baseline_kl:
    the baseline's ``teacher_kl`` (KL(teacher ‖ baseline) on the store's top-k); zlib_entropy: from
    the teacher's features; label: the student's exact_match.

    A baseline of another tokenizer (its features scored across tokenizers, features_cross.py):
    per-token perplexities and the top-k KL do not compare across tokenizers, so the columns are
    byte-based instead: teacher_bpb, baseline_bpb (bits per byte), teacher_baseline_llr (the
    baseline's ``teacher_llr_per_byte``: the per-byte KL stand-in) and zlib_entropy; examples the
    baseline's tokenizer could not align are left out.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    results = eval_results(student_eval, "student")
    have = pq.read_schema(results).names
    if "exact_match" not in have or "example_id" not in have:
        raise KdError(f"{results} lacks example_id / exact_match: rerun extract-eval for the student")
    ev = pq.read_table(results, columns=["example_id", "exact_match"]).to_pandas()
    if ev["example_id"].duplicated().any():
        raise KdError(f"student evaluation {student_eval} repeats example ids: rerun extract-eval there")
    cross = _scored_across_tokenizers(baseline_features)
    teacher = read_features(teacher_features, "teacher", ["ppl", "bits_per_byte", "zlib_entropy"] if cross
                            else ["ppl", "zlib_entropy"])
    baseline = read_features(baseline_features, "baseline", ["bits_per_byte", LLR_COLUMN] if cross
                             else ["ppl", "teacher_kl"])
    ids = ev["example_id"].to_numpy()
    for role, frame, d in (("teacher", teacher, teacher_features), ("baseline", baseline, baseline_features)):
        absent = ~np.isin(ids, frame.index.to_numpy())
        if absent.any():
            raise KdError(f"{int(absent.sum())} of the {len(ids)} examples of the student evaluation (e.g. id "
                          f"{int(ids[absent][0])}) have no {role} features in {d}: compute features on the same "
                          "store and --max-examples as extract-eval")
    if cross:
        table = pd.DataFrame({
            "example_id": ids,
            "teacher_bpb": teacher.loc[ids, "bits_per_byte"].to_numpy(np.float64),
            "baseline_bpb": baseline.loc[ids, "bits_per_byte"].to_numpy(np.float64),
            "teacher_baseline_llr": baseline.loc[ids, LLR_COLUMN].to_numpy(np.float64),
            "zlib_entropy": teacher.loc[ids, "zlib_entropy"].to_numpy(np.float64),
        })
        # an example the baseline's tokenizer could not align has no byte features; its student
        # (the same alignment) never trained on it either: left out, not guessed
        scored = table.drop(columns="example_id").notna().all(axis=1).to_numpy()
        return table[scored].reset_index(drop=True), ev["exact_match"].to_numpy().astype(bool)[scored]
    table = pd.DataFrame({
        "example_id": ids,
        "teacher_ppl": teacher.loc[ids, "ppl"].to_numpy(np.float64),
        "baseline_ppl": baseline.loc[ids, "ppl"].to_numpy(np.float64),
        "teacher_baseline_kl": baseline.loc[ids, "teacher_kl"].to_numpy(np.float64),
        "zlib_entropy": teacher.loc[ids, "zlib_entropy"].to_numpy(np.float64),
    })
    return table, ev["exact_match"].to_numpy().astype(bool)


def _scored_across_tokenizers(baseline_features: str | Path) -> bool:
    """True when the baseline's features were scored across tokenizers (features_cross.py): its
    per-token figures do not compare with the teacher's, so the classifier reads byte features."""
    import pyarrow.parquet as pq

    from kdstream.analysis.files import features_path

    return LLR_COLUMN in pq.read_schema(features_path(baseline_features, "baseline")).names


def run_classify(opts: ClassifyRunOptions) -> dict:
    """Repeated logistic-regression evaluation (``classify.run_classifier``) of how well teacher
    ppl, baseline ppl, teacher–baseline KL and zlib entropy predict the student's memorization.

    With ``filter``: ``classify.fit_filter`` on every example; ``exclude.txt`` (the flagged ids,
    for ``distill --exclude``) and the threshold, target and cross-validated expected recall go
    into the result's ``filter``. Writes ``table.parquet`` (the inputs, label, filter score),
    ``heldout.parquet`` (every repeat's held-out repeat / row / example_id / label / score: the
    ROC curves), ``options.yaml`` and ``classification.json`` (last) into ``opts.out``; returns
    the result.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdstream.analysis.classify import evaluate_repeats, fit_filter, write_exclude_list

    out = Path(opts.out)
    check_output(out, "classify", replace=True)
    from dataclasses import replace

    table, labels = classification_table(opts.student_eval, opts.teacher_features, opts.baseline_features)
    copts = replace(opts.classify_options(), features=tuple(c for c in table.columns if c != "example_id"))
    summary, heldout = evaluate_repeats(table, labels, copts)
    result = {
        "student_eval": str(opts.student_eval),
        "teacher_features": str(opts.teacher_features),
        "baseline_features": str(opts.baseline_features),
        "examples": int(len(labels)),
        **summary,
        "filter": None,
    }
    saved = table.assign(memorized=labels)
    partial = fresh_partial(out, "classify")
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
    pq.write_table(pa.Table.from_pandas(heldout, preserve_index=False), partial / HELDOUT_FILE)
    save_options(opts, partial)
    write_json(partial / CLASSIFICATION_FILE, result)
    publish(partial, out, "classify")
    return jsonable(result)
