"""Compare memorized sets across teacher, CE baseline and KD student."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kdstream.extract.results import RESULTS_FILE


def memorized_ids(eval_dir: str | Path) -> tuple[set[int], int]:
    """(ids of exactly-extracted examples, number of examples evaluated) from an eval directory."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(eval_dir) / RESULTS_FILE, columns=["example_id", "exact_match"])
    ids = table.column("example_id").to_numpy()
    exact = table.column("exact_match").to_numpy(zero_copy_only=False).astype(bool)
    return set(ids[exact].tolist()), int(len(ids))


def compare_sets(teacher: set[int], baseline: set[int], student: set[int], examples: int) -> dict:
    """Counts, rates and the overlaps the paper reports."""
    teacher_only = teacher - baseline  # memorized by the teacher, not by the CE baseline
    rate = lambda s: len(s) / examples if examples else float("nan")  # noqa: E731
    return {
        "examples": examples,
        "memorized": {"teacher": len(teacher), "baseline": len(baseline), "student": len(student)},
        "rate": {"teacher": rate(teacher), "baseline": rate(baseline), "student": rate(student)},
        "student_and_baseline": len(student & baseline),
        "student_and_teacher": len(student & teacher),
        "all_three": len(student & baseline & teacher),
        "teacher_only": len(teacher_only),
        "teacher_only_inherited_by_student": len(student & teacher_only),
        "student_over_baseline": (len(student) / len(baseline)) if baseline else float("nan"),
    }


def format_table(cmp: dict) -> str:
    """A markdown table of the comparison (the demo prints it)."""
    n = cmp["examples"]
    lines = ["| model | memorized | rate |", "|---|---|---|"]
    for name in ("teacher", "baseline", "student"):
        lines.append(f"| {name} | {cmp['memorized'][name]} / {n} | {100 * cmp['rate'][name]:.2f}% |")
    ratio = cmp["student_over_baseline"]
    lines += [
        "",
        "| overlap | count |",
        "|---|---|",
        f"| student ∩ baseline | {cmp['student_and_baseline']} |",
        f"| student ∩ teacher | {cmp['student_and_teacher']} |",
        f"| student ∩ baseline ∩ teacher | {cmp['all_three']} |",
        f"| teacher-only (teacher, not baseline) | {cmp['teacher_only']} |",
        f"| teacher-only inherited by student | {cmp['teacher_only_inherited_by_student']} |",
        f"| student ÷ baseline | {'n/a' if ratio is None or np.isnan(ratio) else f'{ratio:.2f}'} |",
    ]
    return "\n".join(lines)
