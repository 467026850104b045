"""`kdstream features | compare | classify | report`: memorization analysis after extract-eval.

Only argument parsing and printing live here; the work is in kdstream.analysis (features_run,
compare_run, classify_run, report). Heavy imports happen inside the commands so --help is fast.
User errors are KdError, which the `kdstream` entry point prints as one line (exit 2). cli.py
registers ``ANALYSIS_COMMANDS``.
"""
from __future__ import annotations


import click

from kdstream.cli_common import config_option, print_summary


@click.command("features")
@config_option
@click.option("--model", required=True, help="HF model directory sharing the store's tokenizer (teacher or baseline).")
@click.option("--logits-store", required=True, help="Teacher store (path or URL): the examples and the teacher's top-k.")
@click.option("--out", required=True, help="Directory for features.parquet, options.yaml and summary.json.")
@click.option("--prefix-len", type=int, default=50, show_default=True, help="suffix_ppl starts after this many tokens.")
@click.option("--suffix-len", type=int, default=50, show_default=True, help="Tokens scored by suffix_ppl.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Examples per forward pass.")
@click.option("--max-examples", type=int, default=None, help="Score only the first N examples.")
@click.option("--overwrite", is_flag=True, help="Replace existing features in --out.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the model runs: auto = CUDA when available.")
def features(**kw):
    """Per-example features of one model over a teacher store (fp32, transformers): ppl, suffix ppl,
    Min-K%, KL(teacher ‖ model), zlib entropy and ratio, the teacher's own ppl from the store."""
    from kdstream.analysis.features_run import FeaturesOptions, run_features

    print_summary(run_features(FeaturesOptions(**kw)))


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
    (three extract-eval directories) and, with features directories, their medians over memorized
    vs not memorized examples; prints the markdown table, then the JSON."""
    from kdstream.analysis.compare_run import compare_evals, format_comparison, write_comparison
    from kdstream.analysis.files import jsonable

    features = {"teacher": teacher_features, "baseline": baseline_features, "student": student_features}
    cmp = compare_evals(teacher_eval, baseline_eval, student_eval, features)
    write_comparison(cmp, out)
    click.echo(format_comparison(cmp))
    print_summary(jsonable(cmp))


@click.command("classify")
@config_option
@click.option("--student-eval", required=True, help="extract-eval directory of the student (labels: exact match).")
@click.option("--teacher-features", required=True, help="`kdstream features` directory of the teacher.")
@click.option("--baseline-features", required=True, help="`kdstream features` directory of the CE baseline.")
@click.option("--out", required=True,
              help="Directory for classification.json, table.parquet, heldout.parquet, options.yaml (exclude.txt).")
@click.option("--repeats", type=int, default=100, show_default=True, help="Seeded resample / split / fit repeats.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--negative-ratio", type=float, default=3, show_default=True, help="Negatives sampled per positive.")
@click.option("--test-size", type=float, default=0.3, show_default=True, help="Held-out fraction, stratified.")
@click.option("--filter", "filter", is_flag=True, help="Also fit on every example and write exclude.txt for distill --exclude.")
@click.option("--target-recall", type=float, default=0.95, show_default=True,
              help="With --filter: share of memorized examples the filter must flag.")
def classify(**kw):
    """Predict the student's memorization from teacher ppl, baseline ppl, teacher–baseline KL and
    zlib entropy (standardized logistic regression, repeated); --filter writes an exclude list."""
    from kdstream.analysis.classify_run import ClassifyRunOptions, run_classify

    print_summary(run_classify(ClassifyRunOptions(**kw)))


@click.command("report")
@config_option
@click.option("--teacher-eval", required=True, help="extract-eval directory of the teacher.")
@click.option("--baseline-eval", required=True, help="extract-eval directory of the CE baseline.")
@click.option("--student-eval", required=True, help="extract-eval directory of the KD student.")
@click.option("--out", required=True, help="Directory for report.md, report.json, the PNG plots and options.yaml.")
@click.option("--teacher-features", default=None, help="`kdstream features` directory of the teacher (zlib plots, medians).")
@click.option("--baseline-features", default=None, help="`kdstream features` directory of the baseline.")
@click.option("--classify", default=None, help="`kdstream classify` output directory (classifier numbers, ROC curve).")
@click.option("--prefix-eval", multiple=True, metavar="ROLE=DIR",
              help="Repeatable: an extract-eval of ROLE (teacher|baseline|student) at another --prefix-len, "
                   "a point of the rate-by-prefix-length plot.")
def report(**kw):
    """Write report.md, report.json and PNG plots (Venn diagram of the memorized sets, zlib entropy
    histograms, classifier ROC, rate by prefix length) from the study's output directories;
    sections whose optional input is missing say which flag to pass."""
    from kdstream.analysis.files import REPORT_MD
    from kdstream.analysis.report import ReportOptions, run_report

    opts = ReportOptions(**kw)
    result = run_report(opts)
    cls = result["classifier"]
    print_summary({"out": opts.out, "report": f"{opts.out}/{REPORT_MD}", "plots": sorted(result["plots"].values()),
                   "examples": result["comparison"]["examples"], "memorized": result["comparison"]["memorized"],
                   "auc_mean": cls["auc"]["mean"] if cls else None, "notes": result["notes"]})


ANALYSIS_COMMANDS = [features, compare, classify, report]
