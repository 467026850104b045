"""``kdstream report``: one directory people read after a study — report.md, report.json and PNGs.

Inputs are the outputs of the other commands, never recomputed: three extract-eval directories
(teacher, CE baseline, student; required), ``features`` directories (optional: zlib entropy
histograms and feature medians), a ``classify`` directory (optional: classifier numbers and ROC)
and extra extract-eval directories at other prefix lengths (optional: ``ROLE=DIR``).

Memorization rate by prefix length: each eval's ``summary.json`` gives its points — every entry of
``by_prefix_len`` when extract-eval evaluated several prefix lengths in one run, otherwise its
single (prefix_len, memorized / examples) — and every ``--prefix-eval ROLE=DIR`` adds the points of
that directory to ROLE's line. Two sources giving one (role, prefix length) different numbers
is an error (the plot would silently pick one).

Every number in report.md is in report.json, and report.json copies the numbers of
``compare_evals`` (``comparison``) and of classification.json (``classifier``) unchanged. A missing
optional input leaves its section in place, saying which flag produces it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdstream.analysis.compare_run import (
    ROLES,
    VENN_REGIONS,
    compare_evals,
    format_feature_summary,
    format_forks,
    memorized_sets,
)
from kdstream.analysis.files import (
    CLASSIFICATION_FILE,
    HELDOUT_FILE,
    PLOTS,
    REPORT_JSON,
    REPORT_MD,
    eval_summary,
    jsonable,
    read_json,
    write_json,
)
from kdstream.errors import KdError
from kdstream.options import option, require, save_options
from kdstream.outputs import check_output, fresh_partial, publish

# summary.json keys of an eval shown in the report's first table (absent keys are skipped)
EVAL_KEYS = ("examples", "memorized", "rate", "approx_memorized", "prefix_len", "suffix_len", "method",
             "verdict_method", "memorized_by_method", "near_ties", "disagreements", "disagreements_not_near_tie",
             "model")
ROC_GRID = 101  # false-positive rates at which the repeats' curves are averaged


@dataclass(frozen=True)
class ReportOptions:
    """Assemble a memorization report from the study's output directories."""

    teacher_eval: str = option(help="extract-eval directory of the teacher (results.parquet + summary.json).")
    baseline_eval: str = option(help="extract-eval directory of the CE baseline.")
    student_eval: str = option(help="extract-eval directory of the KD student.")
    out: str = option(help="Directory for report.md, report.json, the PNG plots and options.yaml.")
    teacher_features: str | None = option(None, "`kdstream features` directory of the teacher (zlib plots, medians).")
    baseline_features: str | None = option(None, "`kdstream features` directory of the baseline.")
    classify: str | None = option(None, "`kdstream classify` output directory (classifier numbers, ROC curve).")
    prefix_eval: tuple[str, ...] = option((), "Repeatable: an extract-eval of ROLE (teacher|baseline|student) at "
                                              "another --prefix-len, a point of the rate-by-prefix-length plot.",
                                          metavar="ROLE=DIR")

    def __post_init__(self) -> None:
        if isinstance(self.prefix_eval, (list, str)):  # from YAML or one flag
            object.__setattr__(self, "prefix_eval", (self.prefix_eval,) if isinstance(self.prefix_eval, str)
                               else tuple(self.prefix_eval))
        require(bool(self.teacher_eval) and bool(self.baseline_eval) and bool(self.student_eval) and bool(self.out),
                "pass --teacher-eval, --baseline-eval, --student-eval (extract-eval directories) and --out DIR")
        for entry in self.prefix_eval:
            role, _, d = str(entry).partition("=")
            require(role in ROLES and bool(d), f"--prefix-eval {entry!r} must be ROLE=DIR with ROLE one of "
                                               f"{', '.join(ROLES)} (e.g. student=eval/student-p64)")

    def prefix_dirs(self) -> list[tuple[str, str]]:
        return [tuple(str(e).split("=", 1)) for e in self.prefix_eval]


# ---- numbers ----------------------------------------------------------------------------------

def _points(summary: dict, role: str, source: str) -> list[dict]:
    """(role, prefix length) points of one eval summary: its by_prefix_len, else its single one."""
    entries = summary.get("by_prefix_len")
    if entries is None:
        if summary.get("prefix_len") is None or not summary.get("examples"):
            return []
        entries = [{k: summary.get(k) for k in ("prefix_len", "examples", "memorized", "rate")}]
    points = []
    for e in entries:
        try:
            p, n, m = int(e["prefix_len"]), int(e["examples"]), int(e["memorized"])
            rate = float(e["rate"]) if e.get("rate") is not None else m / n
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            raise KdError(f"{role} evaluation {source} has a malformed prefix-length entry {e!r} in its summary.json: "
                          "rerun extract-eval there") from None
        points.append({"role": role, "prefix_len": p, "suffix_len": summary.get("suffix_len"), "examples": n,
                       "memorized": m, "rate": rate, "source": source})
    return points


def prefix_points(opts: ReportOptions, summaries: dict[str, dict]) -> list[dict]:
    """Every (role, prefix length) point of the main evals and the ``--prefix-eval`` directories,
    sorted by role then prefix length; the same point from two sources must agree."""
    found: dict[tuple[str, int], dict] = {}
    sources = [(role, d, summaries[role]) for role, d in
               zip(ROLES, (opts.teacher_eval, opts.baseline_eval, opts.student_eval))]
    sources += [(role, d, eval_summary(d, f"{role} --prefix-eval")) for role, d in opts.prefix_dirs()]
    for role, d, summary in sources:
        for p in _points(summary, role, str(d)):
            key = (role, p["prefix_len"])
            seen = found.get(key)
            if seen is None:
                found[key] = p
            elif (seen["examples"], seen["memorized"]) != (p["examples"], p["memorized"]):
                raise KdError(f"{role} at prefix length {key[1]}: {seen['source']} says {seen['memorized']}/"
                              f"{seen['examples']} memorized, {d} says {p['memorized']}/{p['examples']}: "
                              "pass only one evaluation per model and prefix length")
    order = {r: i for i, r in enumerate(ROLES)}
    return sorted(found.values(), key=lambda p: (order[p["role"]], p["prefix_len"]))


def roc_curves(heldout, repeats: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray, list[float]]:
    """Per-repeat ROC curves of classify's held-out predictions, their vertical average on a grid
    of ``ROC_GRID`` false-positive rates, and each repeat's AUC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    curves, aucs = [], []
    grid = np.linspace(0.0, 1.0, ROC_GRID)
    tprs = []
    for r in range(repeats):
        rows = heldout[heldout["repeat"] == r]
        fpr, tpr, _ = roc_curve(rows["label"].to_numpy(bool), rows["score"].to_numpy(float))
        curves.append((fpr, tpr))
        aucs.append(float(roc_auc_score(rows["label"].to_numpy(bool), rows["score"].to_numpy(float))))
        mean_tpr = np.interp(grid, fpr, tpr)
        mean_tpr[0] = 0.0
        tprs.append(mean_tpr)
    return curves, grid, np.mean(tprs, axis=0), aucs


def _classifier_section(classify_dir: str | None) -> tuple[dict | None, object | None, str | None]:
    """(classification.json, heldout DataFrame or None, note) of a classify directory."""
    import pyarrow.parquet as pq

    if classify_dir is None:
        return None, None, "not available: pass --classify DIR, the output directory of `kdstream classify`"
    d = Path(classify_dir)
    if not (d / CLASSIFICATION_FILE).is_file():
        raise KdError(f"--classify {d} has no {CLASSIFICATION_FILE} (unfinished or not a classify output): "
                      "run `kdstream classify --out DIR` and pass that DIR")
    cls = read_json(d / CLASSIFICATION_FILE, "classification", "rerun `kdstream classify` there")
    if not (d / HELDOUT_FILE).is_file():
        return cls, None, (f"no ROC curve: {d} has no {HELDOUT_FILE} (written by classify since it saves "
                           "held-out scores); rerun `kdstream classify` with the same options")
    heldout = pq.read_table(d / HELDOUT_FILE).to_pandas()
    return cls, heldout, None


def _zlib_section(cmp: dict) -> tuple[dict | None, str | None]:
    """zlib entropy of memorized vs not (per model's set) from the first features directory."""
    for role, summary in cmp["features"].items():
        if "zlib_entropy" in summary["teacher"]["memorized"]["mean"]:
            out = {"features": role}
            for split, groups in summary.items():
                # text_bytes: the text's length, which the zlib entropy of a fixed-token window grows
                # with (features directories before it have none)
                out[split] = {g: {"examples": groups[g]["examples"], "mean": groups[g]["mean"]["zlib_entropy"],
                                  "median": groups[g]["median"]["zlib_entropy"],
                                  "median_text_bytes": groups[g]["median"].get("text_bytes")}
                              for g in ("memorized", "not_memorized")}
            return out, None
    return None, ("not available: pass --teacher-features DIR or --baseline-features DIR "
                  "(`kdstream features` over the same examples)")


# ---- markdown ---------------------------------------------------------------------------------

def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(rate) -> str:
    return "n/a" if rate is None or (isinstance(rate, float) and math.isnan(rate)) else f"{100 * rate:.2f}%"


def format_report(report: dict) -> str:
    """report.md from report.json's dict (so both always hold the same numbers)."""
    from kdstream.analysis.compare import format_table

    cmp, n = report["comparison"], report["comparison"]["examples"]
    lines = ["# Memorization report", "",
             "Exact match of a greedy continuation of each example's prefix (extract-eval); "
             f"{n} examples evaluated per model.", "", "## Evaluations", ""]
    keys = [k for k in EVAL_KEYS if any(k in report["evals"][r] for r in ROLES)]
    lines += ["| role | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for role in ROLES:
        ev = report["evals"][role]
        cells = [_pct(ev[k]) if k == "rate" and k in ev else _fmt(ev.get(k)) if k in ev else "—" for k in keys]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")

    share = cmp["student_memorized_by_both_others"]
    lines += ["", "## Memorized sets", "", format_table(cmp), "",
              "| Venn region (exclusive) | count |", "|---|---|"]
    lines += [f"| {label} | {cmp['venn'][key]} |" for key, label in VENN_REGIONS]
    lines += [f"| union | {cmp['union']} |", f"| none of the three | {n - cmp['union']} |", "",
              "Inheritance: the student memorized "
              f"{cmp['teacher_only_inherited_by_student']} of the {cmp['teacher_only']} examples the teacher "
              "memorized and the baseline did not; "
              + ("the student memorized nothing." if share is None or (isinstance(share, float) and math.isnan(share))
                 else f"{100 * share:.1f}% of the student's memorized examples were memorized by both others."),
              *(["", format_forks(cmp["forks"]) + "."] if cmp.get("forks") else []),
              "", f"![Venn diagram of the memorized sets]({report['plots']['venn']})"]

    lines += ["", "## zlib entropy: memorized vs not", ""]
    z = report["zlib_entropy"]
    if z is None:
        lines.append(report["notes"]["zlib_entropy"])
    else:
        lines += [f"zlib entropy (bytes of the zlib-compressed text) from the {z['features']} features; "
                  "text bytes: the text's UTF-8 length (median), which the zlib entropy of a window of a "
                  "fixed number of tokens grows with.", "",
                  "| split by | memorized: n | median | mean | text bytes | not memorized: n | median | mean "
                  "| text bytes |", "|---|---|---|---|---|---|---|---|---|"]
        for role in ROLES:
            m, o = z[role]["memorized"], z[role]["not_memorized"]
            lines.append(f"| {role} | {m['examples']} | {_fmt(m['median'])} | {_fmt(m['mean'])} | "
                         f"{_fmt(m.get('median_text_bytes'))} | {o['examples']} | {_fmt(o['median'])} | "
                         f"{_fmt(o['mean'])} | {_fmt(o.get('median_text_bytes'))} |")
        lines += ["", f"![zlib entropy histograms]({report['plots']['zlib']})"]
    for role, summary in cmp["features"].items():
        lines += ["", "### " + f"{role} features", "", format_feature_summary(summary, role)]

    lines += ["", "## Classifier: predicting student memorization", ""]
    c = report["classifier"]
    if c is None:
        lines.append(report["notes"]["classifier"])
    else:
        lines += [
            f"Standardized logistic regression on {', '.join(c['features'])}; {c['positives']} memorized and "
            f"{c['negatives']} not ({c['negatives_sampled']} sampled per repeat), {_pct(c['test_size'])} held out, "
            f"{c['repeats']} repeats, seed {c['seed']}.", "",
            "| metric | mean | sd |", "|---|---|---|",
            *(f"| {k} | {c[k]['mean']:.3f} | {c[k]['sd']:.3f} |" for k in ("auc", "precision", "recall")), "",
            "| coefficient (log-odds per sd) | mean | sd |", "|---|---|---|",
            *(f"| {f} | {v['mean']:.3f} | {v['sd']:.3f} |" for f, v in c["coefficients"].items()),
        ]
        if report["notes"].get("classifier_labels"):
            lines += ["", "**" + report["notes"]["classifier_labels"] + "**"]
        f = c.get("filter")
        if f:
            lines += ["", f"Filter: threshold {f['threshold']:.4g} flags {f['flagged']} examples "
                          f"({_pct(f['flagged_share'])}) for target recall {_pct(f['target_recall'])}; expected recall "
                          f"on unseen examples {_pct(f['expected_recall'])} ({f['cv_folds']}-fold CV); exclude list "
                          f"`{f['exclude_file']}`."]
        if report["plots"].get("roc"):
            lines += ["", f"![ROC curve]({report['plots']['roc']})"]
        else:
            lines += ["", report["notes"]["roc"]]

    lines += ["", "## Memorization rate by prefix length", ""]
    points = report["prefix_len"]["points"]
    if not points:
        lines.append(report["notes"]["prefix_len"])
    else:
        lines += ["| model | prefix length | suffix length | memorized | rate | source |", "|---|---|---|---|---|---|"]
        lines += [f"| {p['role']} | {p['prefix_len']} | {_fmt(p['suffix_len'])} | {p['memorized']} / {p['examples']} | "
                  f"{_pct(p['rate'])} | `{p['source']}` |" for p in points]
        if report["notes"].get("prefix_len"):
            lines += ["", report["notes"]["prefix_len"]]
        lines += ["", f"![memorization rate by prefix length]({report['plots']['prefix_len']})"]
    return "\n".join(lines) + "\n"


# ---- the command ------------------------------------------------------------------------------

def run_report(opts: ReportOptions) -> dict:
    """Write report.md, report.json, the PNGs and options.yaml into ``opts.out`` (under
    ``OUT.partial``, published at the end); return report.json's dict."""
    from kdstream.analysis import plots
    from kdstream.analysis.files import read_features

    out = Path(opts.out)
    check_output(out, "report", replace=True)
    dirs = dict(zip(ROLES, (opts.teacher_eval, opts.baseline_eval, opts.student_eval)))
    summaries = {role: eval_summary(d, role) for role, d in dirs.items()}
    features = {"teacher": opts.teacher_features, "baseline": opts.baseline_features}
    cmp = compare_evals(*dirs.values(), features)
    sets, ids = memorized_sets(*dirs.values())
    cls, heldout, cls_note = _classifier_section(opts.classify)
    zlib, zlib_note = _zlib_section(cmp)
    points = prefix_points(opts, summaries)

    notes: dict[str, str] = {}
    if zlib_note:
        notes["zlib_entropy"] = zlib_note
    if cls_note:
        notes["roc" if cls is not None else "classifier"] = cls_note
    if cls is not None and cls.get("student_eval") and \
            Path(cls["student_eval"]).resolve() != Path(opts.student_eval).resolve():
        notes["classifier_labels"] = (f"The classifier was fitted on the labels of {cls['student_eval']}, not on "
                                      f"--student-eval {opts.student_eval}: rerun classify on that eval to match.")
    lengths = {p["prefix_len"] for p in points}
    if not points and any(s.get("prefix") == "conversation" for s in summaries.values()):
        notes["prefix_len"] = ("not applicable: conversations are judged from each one's own prompt (the conversation "
                               "up to its first assistant answer), not from a fixed number of prefix tokens")
    elif not points:
        notes["prefix_len"] = ("not available: the evaluations' summary.json files name no prefix_len; rerun "
                               "extract-eval (it records --prefix-len) or pass --prefix-eval ROLE=DIR")
    elif len(lengths) == 1:
        notes["prefix_len"] = ("Only one prefix length was evaluated: run extract-eval at other --prefix-len values "
                               "(several in one run, or one run each passed as --prefix-eval ROLE=DIR) for a curve.")

    partial = fresh_partial(out, "report")
    plotted = {"venn": PLOTS["venn"]}
    plots.venn_plot(cmp["venn"], cmp["memorized"], cmp["examples"], partial / PLOTS["venn"])
    if zlib is not None:
        values = read_features(features[zlib["features"]], zlib["features"], ["zlib_entropy"])
        zvals = values.loc[ids, "zlib_entropy"].to_numpy(np.float64)  # (N,) in eval order
        plots.zlib_histograms(zvals, {r: np.isin(ids, list(sets[r])) for r in ROLES}, partial / PLOTS["zlib"])
        plotted["zlib"] = PLOTS["zlib"]
    if heldout is not None:
        if sorted(set(heldout["repeat"].tolist())) != list(range(int(cls["repeats"]))):
            raise KdError(f"{opts.classify}: {HELDOUT_FILE} does not hold the {cls['repeats']} repeats of "
                          f"{CLASSIFICATION_FILE} (files from different runs): rerun `kdstream classify` there")
        curves, grid, mean_tpr, aucs = roc_curves(heldout, int(cls["repeats"]))
        if not math.isclose(float(np.mean(aucs)), float(cls["auc"]["mean"]), rel_tol=1e-9, abs_tol=1e-12):
            raise KdError(f"{opts.classify}: {HELDOUT_FILE} gives mean AUC {np.mean(aucs):.6f}, {CLASSIFICATION_FILE} "
                          f"{cls['auc']['mean']:.6f} (files from different runs): rerun `kdstream classify` there")
        plots.roc_plot(curves, grid, mean_tpr, cls["auc"]["mean"], cls["auc"]["sd"], cls["test_size"],
                       partial / PLOTS["roc"])
        plotted["roc"] = PLOTS["roc"]
    if points:
        plots.prefix_rate_plot(points, partial / PLOTS["prefix_len"])
        plotted["prefix_len"] = PLOTS["prefix_len"]

    report = jsonable({
        "inputs": {**{f"{r}_eval": str(d) for r, d in dirs.items()}, "teacher_features": opts.teacher_features,
                   "baseline_features": opts.baseline_features, "classify": opts.classify,
                   "prefix_eval": list(opts.prefix_eval)},
        "evals": {r: {k: summaries[r][k] for k in EVAL_KEYS if k in summaries[r]} for r in ROLES},
        "comparison": cmp,
        "zlib_entropy": zlib,
        "classifier": cls,
        "prefix_len": {"points": points, "lengths": sorted(lengths)},
        "plots": plotted,
        "notes": notes,
    })
    write_json(partial / REPORT_JSON, report)
    (partial / REPORT_MD).write_text(format_report(report))
    save_options(opts, partial)
    publish(partial, out, "report")
    return report
