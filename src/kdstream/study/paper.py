"""The paper's findings ("Memorization Dynamics in Knowledge Distillation for Language Models",
2026: Pythia-12B teacher, Pythia-1.4B baseline and student, 1M FineWeb examples of 256 tokens,
50 -> 50 tokens), and for each the qualitative claim a miniature can test.

``findings(fig)`` turns the study's aggregated figures into rows: the paper's value, ours, the
criterion, and a verdict (reproduced / not reproduced / not testable, with why). The criteria are
the direction of each finding, not its size: a 2-core miniature with 128 examples cannot match
0.07% rates, but it can show the same ordering, overlap and predictability.
"""
from __future__ import annotations

import math

PAPER = {
    "rates": "0.33% / 0.17% (1,698) / 0.07% (706)",
    "student_over_baseline": "≈ 0.42 (2.4× fewer)",
    "inherited": "18 of 1,955 (0.9%)",
    "also_by_both": "676 of 706 (95.7%)",
    "auc": "0.9997 ± 0.0005",
    "coefficients": "zlib −4.50, KL −1.06, baseline ppl −0.40, teacher ppl −0.33",
    "filtered": "1,698 → 4",
}
COEF_LABELS = {"zlib_entropy": "zlib", "teacher_baseline_kl": "KL", "baseline_ppl": "baseline ppl",
               "teacher_ppl": "teacher ppl"}
# a baseline of another tokenizer: the byte-based features (analysis/classify_run.py)
COEF_LABELS.update({"teacher_bpb": "teacher bpb", "baseline_bpb": "baseline bpb", "teacher_baseline_llr": "LLR/byte"})
INHERIT_MAX = 0.10  # "few": at most 10% of teacher-only memorized examples reach the student
BOTH_MIN = 0.80  # "mostly": at least 80% of the student's set is memorized by both others
AUC_MIN = 0.90
FILTER_MAX = 0.25  # filtering removes at least three quarters of the student's memorization


def _ms(stat: dict, fmt: str = "{:.3g}", scale: float = 1.0) -> str:
    """'mean ± sd' (sd omitted for one seed)."""
    m, sd, n = stat["mean"], stat["sd"], stat["n"]
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "n/a"
    text = fmt.format(m * scale)
    return text + (f" ± {fmt.format(sd * scale)}" if n > 1 else "")


def _count(stat: dict) -> str:
    """A count: whole for one seed, 'mean ± sd' to one decimal over several."""
    return _ms(stat, "{:.0f}" if stat["n"] == 1 else "{:.1f}")


def _verdict(ok: bool | None, why: str = "") -> str:
    if ok is None:
        return "not testable" + (f" ({why})" if why else "")
    return "reproduced" if ok else "not reproduced"


def findings(agg: dict) -> list[dict]:
    """Rows {finding, paper, ours, criterion, verdict} from ``summary.aggregate``'s dict."""
    rate = {r: agg["rate"][r] for r in ("teacher", "baseline", "student")}
    pct = lambda r: _ms(rate[r], "{:.1f}", 100) + "%"  # noqa: E731
    count = lambda r: _count(agg["memorized"][r])  # noqa: E731
    rows = [
        {"finding": "memorized: teacher / CE baseline / KD student", "paper": PAPER["rates"],
         "ours": f"{pct('teacher')} / {pct('baseline')} ({count('baseline')}) / {pct('student')} ({count('student')})",
         "criterion": "student < baseline",
         "verdict": _verdict(None if rate["baseline"]["mean"] == 0 == rate["student"]["mean"]
                             else rate["student"]["mean"] < rate["baseline"]["mean"], "neither memorized anything")},
        {"finding": "teacher memorizes more than the CE baseline", "paper": "0.33% > 0.17%",
         "ours": f"{pct('teacher')} vs {pct('baseline')}", "criterion": "teacher > baseline",
         "verdict": _verdict(None if rate["teacher"]["mean"] == 0 == rate["baseline"]["mean"]
                             else rate["teacher"]["mean"] > rate["baseline"]["mean"], "neither memorized anything")},
    ]
    ratio = agg["student_over_baseline"]
    rows.append({"finding": "student ÷ baseline", "paper": PAPER["student_over_baseline"],
                 "ours": _ms(ratio, "{:.2f}"), "criterion": "< 1",
                 "verdict": _verdict(None if _nan(ratio) else ratio["mean"] < 1, "the baseline memorized nothing")})
    inh, only = agg["teacher_only_inherited"], agg["teacher_only"]
    share = inh["sum"] / only["sum"] if only["sum"] else float("nan")
    forked = (f"; {agg['teacher_only_inherited_at_fork']['sum']:.0f} of them lost by the baseline at a fork "
              "between near-duplicates" if forks_counted(agg) and inh["sum"] else "")
    rows.append({"finding": "teacher-only memorized examples the student inherited", "paper": PAPER["inherited"],
                 "ours": f"{inh['sum']:.0f} of {only['sum']:.0f}" + ("" if _nan_v(share) else f" ({100 * share:.1f}%)")
                 + forked,
                 "criterion": f"≤ {100 * INHERIT_MAX:.0f}%",
                 "verdict": _verdict(None if _nan_v(share) else share <= INHERIT_MAX,
                                     "the teacher memorized nothing the baseline did not")})
    both, stud = agg["student_also_by_both"], agg["memorized"]["student"]
    share = both["sum"] / stud["sum"] if stud["sum"] else float("nan")
    rows.append({"finding": "student-memorized also memorized by teacher and baseline", "paper": PAPER["also_by_both"],
                 "ours": f"{both['sum']:.0f} of {stud['sum']:.0f}" + ("" if _nan_v(share) else f" ({100 * share:.1f}%)"),
                 "criterion": f"≥ {100 * BOTH_MIN:.0f}%",
                 "verdict": _verdict(None if _nan_v(share) else share >= BOTH_MIN, "the student memorized nothing")})
    cls = agg.get("classifier")
    why = "fewer than 5 examples memorized (or not) by the student: no classifier to fit"
    if cls:
        coefs = cls["coefficients"]
        ours = ", ".join(f"{COEF_LABELS.get(k, k)} {_ms(v, '{:+.2f}')}" for k, v in coefs.items())
        negative = all(v["mean"] < 0 for v in coefs.values())
        zlib_top = max(coefs, key=lambda k: abs(coefs[k]["mean"])) == "zlib_entropy"
        rows += [
            {"finding": "classifier AUC (teacher bpb, baseline bpb, teacher–baseline LLR per byte, zlib)"
             if "teacher_bpb" in coefs else "classifier AUC (teacher ppl, baseline ppl, teacher–baseline KL, zlib)",
             "paper": PAPER["auc"],
             "ours": _ms(cls["auc"], "{:.4f}") + (f" (one seed: ± {cls['auc_sd_within']:.4f} over repeats)"
                                                  if cls["auc"]["n"] == 1 else ""),
             "criterion": f"≥ {AUC_MIN}", "verdict": _verdict(cls["auc"]["mean"] >= AUC_MIN)},
            {"finding": "classifier coefficients (standardized)", "paper": PAPER["coefficients"], "ours": ours,
             "criterion": "all negative, zlib strongest", "verdict": _verdict(negative and zlib_top)},
        ]
    else:
        rows += [{"finding": "classifier AUC", "paper": PAPER["auc"], "ours": "n/a", "criterion": f"≥ {AUC_MIN}",
                  "verdict": _verdict(None, why)},
                 {"finding": "classifier coefficients", "paper": PAPER["coefficients"], "ours": "n/a",
                  "criterion": "all negative, zlib strongest", "verdict": _verdict(None, why)}]
    flt = agg.get("filter")
    if flt:
        before, after = flt["student_memorized_before"], flt["student_memorized_after"]
        rows.append({"finding": "student memorization after filtering, then re-distilling", "paper": PAPER["filtered"],
                     "ours": f"{_count(before)} → {_count(after)} (excluded {_count(flt['excluded'])})",
                     "criterion": f"after ≤ {FILTER_MAX:.0%} of before",
                     "verdict": _verdict(after["mean"] <= FILTER_MAX * before["mean"])})
    else:
        if cls:  # a classifier, but on every seed it flagged every example (study/protocol.py)
            why = "the classifier flags every example: nothing left to re-distill on"
        rows.append({"finding": "student memorization after filtering, then re-distilling", "paper": PAPER["filtered"],
                     "ours": "n/a", "criterion": f"after ≤ {FILTER_MAX:.0%} of before", "verdict": _verdict(None, why)})
    return rows


def forks_counted(agg: dict) -> bool:
    """Did `compare` count forks between near-duplicates (analysis/forks.py) in every seed?"""
    forked = agg.get("teacher_only_inherited_at_fork")
    return bool(forked) and forked["n"] == agg["seeds"]


def _nan(stat: dict) -> bool:
    return _nan_v(stat["mean"])


def _nan_v(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
