"""``kdstream compare``: the memorized sets of teacher, CE baseline and student (three extract-eval
directories), the paper's overlaps, all seven Venn regions and, given ``features`` directories,
feature summaries of memorized vs not memorized examples.

``compare.py`` holds the set arithmetic on plain id sets; this file reads and checks the
directories and writes ``comparison.json`` / ``comparison.md``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from kdstream.analysis.files import COMPARISON_JSON, COMPARISON_MD, eval_results, jsonable, read_features
from kdstream.errors import KdError

ROLES = ("teacher", "baseline", "student")
VENN_REGIONS = (  # (key, markdown label)
    ("teacher_only", "teacher only"),
    ("baseline_only", "baseline only"),
    ("student_only", "student only"),
    ("teacher_baseline_only", "teacher ∩ baseline, not student"),
    ("teacher_student_only", "teacher ∩ student, not baseline"),
    ("baseline_student_only", "baseline ∩ student, not teacher"),
    ("all_three", "teacher ∩ baseline ∩ student"),
)


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


def memorized_sets(teacher_dir: str | Path, baseline_dir: str | Path,
                   student_dir: str | Path) -> tuple[dict[str, set[int]], np.ndarray]:
    """({role: memorized example ids}, (N,) the evaluated ids) of three extract-eval directories,
    which must cover the same example ids, each once."""
    from kdstream.analysis.compare import memorized_ids

    dirs = dict(zip(ROLES, (teacher_dir, baseline_dir, student_dir)))
    results = {role: eval_results(d, role) for role, d in dirs.items()}
    ids = {role: _eval_ids(p) for role, p in results.items()}
    for role, values in ids.items():
        if len(np.unique(values)) != len(values):
            raise KdError(f"{role} evaluation {dirs[role]} repeats example ids: rerun extract-eval there")
    ref = set(ids["teacher"].tolist())
    for role in ("baseline", "student"):
        if set(ids[role].tolist()) != ref:
            raise KdError(f"{role} evaluation {dirs[role]} covers other examples than the teacher's "
                          f"({len(ids[role])} vs {len(ref)}): evaluate all three on the same store and --max-examples")
    return {role: memorized_ids(d)[0] for role, d in dirs.items()}, ids["teacher"]


def _group_stats(frame) -> dict:
    """{"examples": n, "mean": {column: value}, "median": {...}} of a (possibly empty) DataFrame."""
    n = len(frame)
    return {
        "examples": int(n),
        "mean": {c: float(frame[c].mean()) if n else float("nan") for c in frame.columns},
        "median": {c: float(frame[c].median()) if n else float("nan") for c in frame.columns},
    }


def feature_summary(sets: dict[str, set[int]], ids: np.ndarray, features_dir: str | Path, role: str) -> dict:
    """Feature statistics of memorized vs not memorized examples, split by each model's set.

    -> {split role: {"memorized": stats, "not_memorized": stats}} where stats = ``_group_stats``
    of every column of ``features_dir``'s features.parquet over the evaluated ``ids``.
    """
    frame = read_features(features_dir, f"{role}")
    absent = ~np.isin(ids, frame.index.to_numpy())
    if absent.any():
        raise KdError(f"{int(absent.sum())} of the {len(ids)} evaluated examples (e.g. id {int(ids[absent][0])}) have "
                      f"no {role} features in {features_dir}: compute features on the same store and --max-examples")
    frame = frame.loc[ids]
    out = {}
    for split, memorized in sets.items():
        mask = np.isin(ids, list(memorized))
        out[split] = {"memorized": _group_stats(frame[mask]), "not_memorized": _group_stats(frame[~mask])}
    return out


def compare_evals(teacher_dir: str | Path, baseline_dir: str | Path, student_dir: str | Path,
                  features: dict[str, str | Path] | None = None) -> dict:
    """Compare what teacher, CE baseline and student memorized (three extract-eval directories).

    Returns ``compare.compare_sets``'s dict (counts, rates, the paper's overlaps; its
    ``teacher_only`` is teacher ∖ baseline) plus ``venn`` (the seven disjoint regions,
    ``VENN_REGIONS``), ``union``, ``student_memorized_by_both_others`` (share of the student's set
    also memorized by teacher and baseline; NaN when the student memorized nothing), ``evals``
    (the directories), ``forks`` (``forks.teacher_only_forks``: how many teacher-only examples the
    baseline lost at a fork between near-duplicate windows, or why that was not tested) and, for
    each ``features`` entry {role: features dir}, ``features[role]`` = ``feature_summary``
    (memorized vs not, split by each model's set).
    """
    from kdstream.analysis.compare import compare_sets
    from kdstream.analysis.forks import teacher_only_forks

    sets, ids = memorized_sets(teacher_dir, baseline_dir, student_dir)
    t, b, s = sets["teacher"], sets["baseline"], sets["student"]
    cmp = compare_sets(t, b, s, len(ids))
    cmp["venn"] = venn_regions(t, b, s)
    cmp["union"] = len(t | b | s)
    cmp["student_memorized_by_both_others"] = len(s & t & b) / len(s) if s else float("nan")
    cmp["evals"] = {role: str(d) for role, d in zip(ROLES, (teacher_dir, baseline_dir, student_dir))}
    cmp["forks"] = teacher_only_forks(baseline_dir, t - b, (t - b) & s)
    given = {role: d for role, d in (features or {}).items() if d is not None}
    cmp["features"] = {role: feature_summary(sets, ids, d, role) for role, d in given.items()}
    cmp["features_dirs"] = {role: str(d) for role, d in given.items()}
    return cmp


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}"


def format_feature_summary(summary: dict, role: str) -> str:
    """Markdown table of one features directory's medians, memorized vs not, per model's set."""
    splits = list(summary)
    columns = list(summary[splits[0]]["memorized"]["median"])
    head = "| " + " | ".join(["feature (median)"] + [f"{s}: memorized | {s}: not" for s in splits]) + " |"
    lines = [f"{role} features, median over memorized vs not memorized examples "
             "(n = " + ", ".join(f"{s} {summary[s]['memorized']['examples']} / {summary[s]['not_memorized']['examples']}"
                                 for s in splits) + ")", "", head, "|" + "---|" * (1 + 2 * len(splits))]
    for c in columns:
        cells = []
        for s in splits:
            cells += [_num(summary[s]["memorized"]["median"][c]), _num(summary[s]["not_memorized"]["median"][c])]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_comparison(cmp: dict) -> str:
    """Markdown: ``compare.format_table``, the Venn regions, then any feature summaries."""
    from kdstream.analysis.compare import format_table

    share = cmp["student_memorized_by_both_others"]
    lines = [format_table(cmp), "", "| Venn region (exclusive) | count |", "|---|---|"]
    lines += [f"| {label} | {cmp['venn'][key]} |" for key, label in VENN_REGIONS]
    lines += [
        f"| union | {cmp['union']} |",
        "",
        "share of the student's memorized examples also memorized by teacher and baseline: "
        + ("n/a" if share is None or math.isnan(share) else f"{100 * share:.1f}%"),
    ]
    if cmp.get("forks"):
        lines += ["", format_forks(cmp["forks"])]
    for role, summary in cmp.get("features", {}).items():
        lines += ["", format_feature_summary(summary, role)]
    return "\n".join(lines)


def format_forks(forks: dict) -> str:
    """One sentence: the teacher-only examples the baseline lost at a fork (``forks.py``)."""
    if "skipped" in forks:
        return f"forks between near-duplicate windows: not tested ({forks['skipped']})"
    only, inh = forks["teacher_only"], forks["inherited"]
    return (f"teacher-only examples the baseline lost at a fork between near-duplicate windows (its greedy "
            f"decoding left the suffix and went on as another training window does): {only['at_fork']} of "
            f"{only['tested']} tested, behind {only['distinct_forks']} distinct forks; of those the student "
            f"inherited, {inh['at_fork']} of {inh['tested']}")


def write_comparison(cmp: dict, out_dir: str | Path) -> dict[str, str]:
    """Write ``comparison.json`` and ``comparison.md`` into ``out_dir`` (created if needed), each
    under a temporary name then renamed; other files there are left alone. -> their paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KdError(f"--out {out} is a file: pass a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in ((COMPARISON_JSON, json.dumps(jsonable(cmp), indent=2) + "\n"),
                       (COMPARISON_MD, format_comparison(cmp) + "\n")):
        tmp = out / (name + ".partial")
        tmp.write_text(text)
        tmp.replace(out / name)
        paths[name] = str(out / name)
    return paths
