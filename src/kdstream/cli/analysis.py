"""`kdstream features | compare | classify | report`: memorization analysis after extract-eval.

Only argument parsing and printing live here; the work is in kdstream.analysis (features_run,
compare_run, classify_run, report). The flags of features, classify and report come from their
option dataclasses. User errors are KdError, which the `kdstream` entry point prints as one line
(exit 2). The package registers ``ANALYSIS_COMMANDS``.
"""
from __future__ import annotations

import click

from kdstream.analysis.classify_run import ClassifyRunOptions, run_classify
from kdstream.analysis.features_run import FeaturesOptions, run_features
from kdstream.analysis.files import REPORT_MD
from kdstream.analysis.report import ReportOptions, run_report
from kdstream.cli.common import config_option, print_summary
from kdstream.cli.options import build, options_from


@click.command("features")
@config_option
@options_from(FeaturesOptions)
def features(**kw):
    """Per-example features of one model over a teacher store (fp32, transformers): ppl, suffix ppl,
    Min-K%, KL(teacher ‖ model), zlib entropy and ratio, the teacher's own ppl from the store."""
    print_summary(run_features(build(FeaturesOptions, kw)))


@click.command("compare")
@config_option
@click.argument("teacher_eval", metavar="TEACHER_EVAL")
@click.argument("baseline_eval", metavar="BASELINE_EVAL")
@click.argument("student_eval", metavar="STUDENT_EVAL")
@click.option("--out", required=True, help="Directory for comparison.json and comparison.md.")
@click.option("--teacher-features", default=None, help="`kdstream features` directory of the teacher (optional).")
@click.option("--baseline-features", default=None, help="`kdstream features` directory of the baseline (optional).")
@click.option("--student-features", default=None, help="`kdstream features` directory of the student (optional).")
def compare(teacher_eval, baseline_eval, student_eval, out, teacher_features, baseline_features, student_features):
    """Memorized counts, overlaps and Venn regions of teacher, CE baseline and student
    (three extract-eval directories), how many teacher-only examples the baseline lost at a fork
    between near-duplicate windows of its store (greedy verdicts only; otherwise why not) and, with
    features directories, their medians over memorized vs not memorized examples; prints the
    markdown table, then the JSON."""
    from kdstream.analysis.compare_run import compare_evals, format_comparison, write_comparison
    from kdstream.analysis.files import jsonable

    features = {"teacher": teacher_features, "baseline": baseline_features, "student": student_features}
    cmp = compare_evals(teacher_eval, baseline_eval, student_eval, features)
    write_comparison(cmp, out)
    click.echo(format_comparison(cmp))
    print_summary(jsonable(cmp))


@click.command("classify")
@config_option
@options_from(ClassifyRunOptions)
def classify(**kw):
    """Predict the student's memorization from teacher ppl, baseline ppl, teacher–baseline KL and
    zlib entropy (standardized logistic regression, repeated); --filter writes an exclude list."""
    print_summary(run_classify(build(ClassifyRunOptions, kw)))


@click.command("report")
@config_option
@options_from(ReportOptions)
def report(**kw):
    """Write report.md, report.json and PNG plots (Venn diagram of the memorized sets, zlib entropy
    histograms, classifier ROC, rate by prefix length) from the study's output directories;
    sections whose optional input is missing say which flag to pass."""
    opts = build(ReportOptions, kw)
    result = run_report(opts)
    cls = result["classifier"]
    print_summary({"out": opts.out, "report": f"{opts.out}/{REPORT_MD}", "plots": sorted(result["plots"].values()),
                   "examples": result["comparison"]["examples"], "memorized": result["comparison"]["memorized"],
                   "auc_mean": cls["auc"]["mean"] if cls else None, "notes": result["notes"]})


ANALYSIS_COMMANDS = [features, compare, classify, report]
