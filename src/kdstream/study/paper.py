"""The paper's findings ("Memorization Dynamics in Knowledge Distillation for Language Models",
2026: Pythia-12B teacher, Pythia-1.4B baseline and student, 1M FineWeb examples of 256 tokens,
50 -> 50 tokens), and for each the qualitative claim a miniature can test.

``findings(fig)`` turns the study's aggregated figures into rows: the paper's value, ours, the
criterion, a 95% interval with the counts it rests on, and a verdict (reproduced / direction only /
not reproduced / not testable, with why; study/intervals.py). The criteria are the direction of
each finding, not its size: a 2-core miniature cannot match 0.07% rates, but it can show the same
ordering, overlap and predictability; "reproduced" needs the interval to clear the criterion.
"""
from __future__ import annotations

import math

import numpy as np

from kdstream.study import intervals as iv

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


def _pp(v: float) -> str:
    return f"{v:+.2f}"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _judged(row: dict, testable: bool, point_ok: bool, interval: tuple[float, float] | None,
            interval_ok: bool, why: str = "", text: str = "", counts: str = "") -> dict:
    """``row`` with its interval (a LEVEL bootstrap interval, study/intervals.py), the counts it
    rests on and the verdict: reproduced only when the interval clears the criterion."""
    if testable and interval is None:  # figures without per-window counts: the figure alone
        text, interval_ok = "n/a (no per-window counts)", False
    row.update(interval=None if not testable or interval is None else list(interval),
               interval_text=text if testable else "n/a", counts=counts,
               verdict=iv.verdict(testable, point_ok, interval_ok, why))
    return row


def _few(n: int, what: str) -> str:
    return f"too few windows: {n} {what}, fewer than {iv.MIN_WINDOWS}"


def findings(agg: dict) -> list[dict]:
    """Rows {finding, paper, ours, criterion, interval, interval_text, counts, verdict} from
    ``summary.aggregate``'s dict. The verdict is "reproduced" only when the finding's interval
    (bootstrap over windows, and seeds when there are several) clears the criterion; "direction
    only" when the figure meets it but the interval straddles it; "not testable" with too few windows."""
    rate = {r: agg["rate"][r] for r in ("teacher", "baseline", "student")}
    pct = lambda r: _ms(rate[r], "{:.1f}", 100) + "%"  # noqa: E731
    count = lambda r: _count(agg["memorized"][r])  # noqa: E731
    win = iv.Windows(agg["windows"], ("teacher", "baseline", "student")) if agg.get("windows") else None
    n = {r: int(agg["memorized"][r]["sum"]) for r in ("teacher", "baseline", "student")}
    total = win.total()[0] if win else agg["examples"] * agg["seeds"]
    reps = {r: win.count((r,))[1] for r in ("teacher", "baseline", "student")} if win else {}

    def rate_gap(more: str, less: str, finding: str, criterion: str, paper: str, ours: str) -> dict:
        """``more`` memorizes more than ``less``: their rate difference (percentage points)."""
        gap = iv.percentile_interval((reps[more] - reps[less]) / win.total()[1] * 100) if win else None
        empty = n[more] == 0 == n[less]
        return _judged({"finding": finding, "paper": paper, "ours": ours, "criterion": criterion},
                       testable=n[more] + n[less] >= iv.MIN_WINDOWS, point_ok=n[more] > n[less],
                       interval=gap, interval_ok=gap is not None and gap[0] > 0,
                       why="neither memorized anything" if empty
                       else _few(n[more] + n[less], f"memorized by {more} or {less}"),
                       text=f"{more} − {less}: [{_pp(gap[0])}, {_pp(gap[1])}] pp" if gap else "",
                       counts=f"{more} {n[more]}, {less} {n[less]} of {total} windows")

    rows = [
        rate_gap("baseline", "student", "memorized: teacher / CE baseline / KD student", "student < baseline",
                 PAPER["rates"], f"{pct('teacher')} / {pct('baseline')} ({count('baseline')}) / "
                                 f"{pct('student')} ({count('student')})"),
        rate_gap("teacher", "baseline", "teacher memorizes more than the CE baseline", "teacher > baseline",
                 "0.33% > 0.17%", f"{pct('teacher')} vs {pct('baseline')}"),
    ]
    ratio = agg["student_over_baseline"]
    ratio_iv = iv.percentile_interval(iv.ratio_replicates(reps["student"], reps["baseline"])) if win else None
    rows.append(_judged({"finding": "student ÷ baseline", "paper": PAPER["student_over_baseline"],
                         "ours": _ms(ratio, "{:.2f}"), "criterion": "< 1"},
                        testable=n["baseline"] >= iv.MIN_WINDOWS, point_ok=n["student"] < n["baseline"],
                        interval=ratio_iv, interval_ok=ratio_iv is not None and ratio_iv[1] < 1,
                        why="the baseline memorized nothing" if n["baseline"] == 0
                        else _few(n["baseline"], "memorized by the baseline"),
                        text=f"[{ratio_iv[0]:.2f}, {ratio_iv[1]:.2f}]" if ratio_iv else "",
                        counts=f"student {n['student']}, baseline {n['baseline']} windows"))
    inh, only = agg["teacher_only_inherited"], agg["teacher_only"]
    share = inh["sum"] / only["sum"] if only["sum"] else float("nan")
    forked = (f"; {agg['teacher_only_inherited_at_fork']['sum']:.0f} of them lost by the baseline at a fork "
              "between near-duplicates" if forks_counted(agg) and inh["sum"] else "")
    rows.append(_share_row(
        {"finding": "teacher-only memorized examples the student inherited", "paper": PAPER["inherited"],
         "ours": f"{inh['sum']:.0f} of {only['sum']:.0f}" + ("" if _nan_v(share) else f" ({100 * share:.1f}%)") + forked,
         "criterion": f"≤ {100 * INHERIT_MAX:.0f}%"},
        win, part=(("teacher", "student"), ("baseline",)), whole=(("teacher",), ("baseline",)),
        below=INHERIT_MAX, none_why="the teacher memorized nothing the baseline did not", what="teacher-only"))
    both, stud = agg["student_also_by_both"], agg["memorized"]["student"]
    share = both["sum"] / stud["sum"] if stud["sum"] else float("nan")
    rows.append(_share_row(
        {"finding": "student-memorized also memorized by teacher and baseline", "paper": PAPER["also_by_both"],
         "ours": f"{both['sum']:.0f} of {stud['sum']:.0f}" + ("" if _nan_v(share) else f" ({100 * share:.1f}%)"),
         "criterion": f"≥ {100 * BOTH_MIN:.0f}%"},
        win, part=(("student", "teacher", "baseline"), ()), whole=(("student",), ()),
        above=BOTH_MIN, none_why="the student memorized nothing", what="student-memorized"))
    rows += _classifier_rows(agg)
    rows.append(_filter_row(agg))
    return rows


def _share_row(row: dict, win, part: tuple, whole: tuple, none_why: str, what: str,
               below: float | None = None, above: float | None = None) -> dict:
    """A share of windows (``part`` of ``whole``, each (has, lacks) roles) against a bound."""
    if win is None:
        k, nn = (int(x) for x in _share_counts(row))
        interval = None
    else:
        (k, k_reps), (nn, n_reps) = win.count(*part), win.count(*whole)
        interval = iv.share_interval(k, nn, k_reps, n_reps) if nn else None
    point = k / nn if nn else float("nan")
    ok_point = nn > 0 and (point <= below if below is not None else point >= above)
    ok_iv = interval is not None and (interval[1] <= below if below is not None else interval[0] >= above)
    return _judged(row, testable=nn >= iv.MIN_WINDOWS, point_ok=ok_point, interval=interval, interval_ok=ok_iv,
                   why=none_why if nn == 0 else _few(nn, what),
                   text=f"[{_pct(interval[0])}, {_pct(interval[1])}]" if interval else "",
                   counts=f"{k} of {nn} {what} windows")


def _share_counts(row: dict) -> tuple[float, float]:
    """(k, n) back from the row's 'k of n' text (figures without per-window counts)."""
    k, _, nn = row["ours"].split(" ")[:3]
    return float(k), float(nn)


def _classifier_rows(agg: dict) -> list[dict]:
    cls = agg.get("classifier")
    why = "fewer than 5 examples memorized (or not) by the student: no classifier to fit"
    if not cls:
        return [_judged({"finding": "classifier AUC", "paper": PAPER["auc"], "ours": "n/a", "criterion": f"≥ {AUC_MIN}"},
                        False, False, None, False, why),
                _judged({"finding": "classifier coefficients", "paper": PAPER["coefficients"], "ours": "n/a",
                         "criterion": "all negative, zlib strongest"}, False, False, None, False, why)]
    coefs = cls["coefficients"]
    names = list(coefs)
    ours = ", ".join(f"{COEF_LABELS.get(k, k)} {_ms(v, '{:+.2f}')}" for k, v in coefs.items())
    negative = all(v["mean"] < 0 for v in coefs.values())
    zlib_top = max(coefs, key=lambda k: abs(coefs[k]["mean"])) == "zlib_entropy"
    per_seed = [r for r in cls.get("repeats") or [] if r]
    splits = (f"{len(per_seed[0]['auc'])} random splits" + (f" × {len(per_seed)} seeds" if len(per_seed) > 1 else "")
              if per_seed else "")
    pos = cls.get("positives") or {"n": 0}
    positives = (f"{pos['sum'] if pos['n'] else agg['memorized']['student']['sum']:.0f} student-memorized windows"
                 + (f" in the {pos['n']} seeds fitted" if pos["n"] and pos["n"] < agg["seeds"] else "") + f"; {splits}")
    auc_iv = coef_iv = None
    if per_seed and len(per_seed) == cls["auc"]["n"]:
        auc_iv = iv.percentile_interval(iv.split_replicates([r["auc"] for r in per_seed]))
        c = iv.split_replicates([np.column_stack([r["coefficients"][k] for k in names]) for r in per_seed])  # (R, F)
        z = names.index("zlib_entropy") if "zlib_entropy" in names else None
        others = np.abs(np.delete(c, z, axis=1)).max(1) if z is not None and len(names) > 1 else np.zeros(len(c))
        # > 0 exactly when every coefficient is negative and zlib's is the largest in size
        margin = np.minimum(-c.max(1), np.abs(c[:, z]) - others) if z is not None else np.full(len(c), -1.0)
        coef_iv = iv.percentile_interval(margin)
        each = ", ".join(f"{COEF_LABELS.get(k, k)} [{lo:+.2f}, {hi:+.2f}]"
                         for k, (lo, hi) in zip(names, (iv.percentile_interval(c[:, i]) for i in range(len(names)))))
        met = float((margin > 0).mean())
    auc_name = ("classifier AUC (teacher bpb, baseline bpb, teacher–baseline LLR per byte, zlib)"
                if "teacher_bpb" in coefs else "classifier AUC (teacher ppl, baseline ppl, teacher–baseline KL, zlib)")
    return [
        _judged({"finding": auc_name, "paper": PAPER["auc"],
                 "ours": _ms(cls["auc"], "{:.4f}") + (f" (one seed: ± {cls['auc_sd_within']:.4f} over repeats)"
                                                      if cls["auc"]["n"] == 1 else ""),
                 "criterion": f"≥ {AUC_MIN}"},
                True, cls["auc"]["mean"] >= AUC_MIN, auc_iv, auc_iv is not None and auc_iv[0] >= AUC_MIN,
                text=f"[{auc_iv[0]:.4f}, {auc_iv[1]:.4f}]" if auc_iv else "", counts=positives),
        _judged({"finding": "classifier coefficients (standardized)", "paper": PAPER["coefficients"], "ours": ours,
                 "criterion": "all negative, zlib strongest"},
                True, negative and zlib_top, coef_iv, coef_iv is not None and coef_iv[0] > 0,
                text=f"{each}; criterion met in {100 * met:.0f}% of resamples" if coef_iv else "", counts=positives),
    ]


def _filter_row(agg: dict) -> dict:
    row = {"finding": "student memorization after filtering, then re-distilling", "paper": PAPER["filtered"],
           "ours": "n/a", "criterion": f"after ≤ {FILTER_MAX:.0%} of before"}
    flt = agg.get("filter")
    if not flt:
        why = ("the classifier flags every example: nothing left to re-distill on" if agg.get("classifier")
               else "fewer than 5 examples memorized (or not) by the student: no classifier to fit")
        return _judged(row, False, False, None, False, why)
    before, after = flt["student_memorized_before"], flt["student_memorized_after"]
    row["ours"] = f"{_count(before)} → {_count(after)} (excluded {_count(flt['excluded'])})"
    k, nn = int(after["sum"]), int(before["sum"])
    seeds = [w for w in agg.get("windows") or [] if "student_filtered" in w["roles"]]
    interval = None
    if seeds and len(seeds) == before["n"]:
        win = iv.Windows(seeds, ("student", "student_filtered"))
        interval = iv.percentile_interval(iv.ratio_replicates(win.count(("student_filtered",))[1],
                                                              win.count(("student",))[1]))
    return _judged(row, testable=nn >= iv.MIN_WINDOWS, point_ok=k <= FILTER_MAX * nn, interval=interval,
                   interval_ok=interval is not None and interval[1] <= FILTER_MAX,
                   why=_few(nn, "memorized by the student before filtering"),
                   text=f"after ÷ before: [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "",
                   counts=f"{nn} before, {k} after")


def forks_counted(agg: dict) -> bool:
    """Did `compare` count forks between near-duplicates (analysis/forks.py) in every seed?"""
    forked = agg.get("teacher_only_inherited_at_fork")
    return bool(forked) and forked["n"] == agg["seeds"]


def _nan_v(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
