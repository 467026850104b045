"""The study's ablation arms: students trained beside the KL student from the same store, in the
same data order, steps and seed, that differ only in their targets.

``hard``: the teacher's top-1 token at each position (``distill --loss hard``, word-level hard KD).
The paper's framing: soft targets regularize, hard targets let the student over-fit, so a hard
student should memorize more than the KL student, closer to the CE baseline. Each arm is reported
with the KL student and the baseline: memorized windows, teacher-only windows inherited, overlap
with the baseline's set, mean ± sd over seeds, and the bootstrap intervals (intervals.py) of its
difference from the KL student and from the baseline.
"""
from __future__ import annotations

from pathlib import Path

from kdstream.study import intervals as iv

ARM_LOSS = {"hard": "hard"}  # the distill --loss of each arm (config.ARMS)


def arm_role(arm: str) -> str:
    """The arm's directory and role name in the seed directory: student_ARM."""
    return f"student_{arm}"


def arm_figures(d: Path, arms: tuple[str, ...], sets: dict[str, set[int]]) -> tuple[dict, dict[str, set[int]]]:
    """({role: figures} for the arms and, to compare them with, the KL student; {arm role: its
    memorized ids}) from the seed directory ``d``; ``sets``: the teacher's, baseline's and
    student's memorized ids."""
    from kdstream.analysis.compare import memorized_ids

    found = {arm_role(a): memorized_ids(d / "eval" / arm_role(a))[0] for a in arms}
    return arm_counts(sets, found), found


def arm_counts(sets: dict[str, set[int]], found: dict[str, set[int]]) -> dict:
    """{role: its counts} of the KL student (``sets["student"]``) and each arm's ``found`` set."""
    t, b = sets["teacher"], sets["baseline"]
    return {role: {"memorized": len(m), "teacher_only_inherited": len(m & (t - b)), "teacher_only": len(t - b),
                   "also_by_baseline": len(m & b), "baseline": len(b)}
            for role, m in {"student": sets["student"], **found}.items()}


def aggregate_arms(figs: list[dict], stat) -> dict | None:
    """{role: {figure: stat over seeds}} for the seeds that ran arms (None: no arms)."""
    with_arms = [f["arms"] for f in figs if f.get("arms")]
    if not with_arms:
        return None
    roles = list(with_arms[0])
    return {r: {k: stat(a[r][k] for a in with_arms) for k in with_arms[0][r]} for r in roles}


def _ms(s: dict, fmt: str = "{:.0f}") -> str:
    if not s["n"]:
        return "n/a"
    if s["n"] == 1:
        return fmt.format(s["mean"])
    return f"{s['mean']:.1f} ± {s['sd']:.1f} ({', '.join(fmt.format(v) for v in s['values'])})"


def _share(part: dict, whole: dict) -> str:
    return f" ({100 * part['sum'] / whole['sum']:.0f}%)" if whole["sum"] else ""


def _gap(win: iv.Windows, more: str, less: str) -> tuple[str, tuple[float, float] | None]:
    """'more − less' in windows per seed: (text, interval), bootstrap over windows and seeds."""
    (a, a_reps), (b, b_reps) = win.count((more,)), win.count((less,))
    interval = iv.percentile_interval((a_reps - b_reps) / win.seeds)
    lo, hi = interval
    return f"{(a - b) / win.seeds:+.1f} [{lo:+.1f}, {hi:+.1f}]", interval


def format_arms(cfg: dict, agg: dict) -> list[str]:
    """study.md's section on the arms: the table, the prediction, what the run finds."""
    arms = agg.get("arms")
    if not arms:
        return []
    seeds = next(iter(arms.values()))["memorized"]["n"]
    names = {"student": "KL student (soft targets)", arm_role("hard"): "hard student (teacher top-1)"}
    base = agg["memorized"]["baseline"]
    lines = ["", "## Hard vs soft targets", "",
             "Students from the same store in the same data order, steps and seed"
             + (f" ({seeds} seeds: mean ± sd, then each seed's count)" if seeds > 1 else "")
             + ": the KL student learns the teacher's distribution at T = "
             f"{cfg['temperature']}, the hard student only its most likely token (`distill --loss hard`).", "",
             "| model | memorized windows | teacher-only windows inherited | also memorized by the CE baseline |",
             "|---|---|---|---|",
             f"| CE baseline (data tokens) | {_ms(base)} | — | — |"]
    for role, f in arms.items():
        lines.append(f"| {names.get(role, role)} | {_ms(f['memorized'])} | {_ms(f['teacher_only_inherited'])} of "
                     f"{_ms(f['teacher_only'])}{_share(f['teacher_only_inherited'], f['teacher_only'])} | "
                     f"{_ms(f['also_by_baseline'])}{_share(f['also_by_baseline'], f['memorized'])} |")
    lines += ["", "What the paper's framing predicts: soft targets regularize and hard targets let the student "
              "over-fit, so the hard student memorizes more than the KL student, closer to the CE baseline "
              "(KL student < hard student ≤ baseline)."]
    win = iv.Windows(agg["windows"], ("baseline", "student", "student_hard")) if agg.get("windows") and all(
        arm_role("hard") in w["roles"] for w in agg["windows"]) else None
    if "student_hard" in arms and win is not None:
        kd, kd_iv = _gap(win, "student_hard", "student")
        ce, ce_iv = _gap(win, "baseline", "student_hard")
        more = kd_iv[0] > 0
        verdict = ("the hard student memorizes more than the KL student, as predicted" if more else
                   "the hard student memorizes fewer than the KL student, against the prediction" if kd_iv[1] < 0
                   else "the interval does not tell the hard and KL students' counts apart")
        closer = ("and fewer than the CE baseline" if ce_iv[0] > 0 else "and more than the CE baseline (beyond "
                  "the prediction's ≤ baseline)" if ce_iv[1] < 0 else "and as many as the CE baseline within the interval")
        lines += ["", f"What this run finds: {verdict}, {closer}. Per seed, hard − KL student: {kd} windows; "
                  f"CE baseline − hard student: {ce} windows ({100 * iv.LEVEL:.0f}% bootstrap interval over windows"
                  + (" and seeds" if win.seeds > 1 else "") + ")."]
    return lines
