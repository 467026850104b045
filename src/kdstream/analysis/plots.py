"""The report's PNG figures (matplotlib, Agg backend: no display needed).

Each function takes the numbers the report already computed and one output path, and writes one
PNG; nothing here reads a directory or computes a statistic the report does not also print.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROLE_COLORS = {"teacher": "#1f77b4", "baseline": "#ff7f0e", "student": "#2ca02c"}
DPI = 120


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` as a PNG at ``path`` and close it."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)


def venn_plot(venn: dict[str, int], memorized: dict[str, int], examples: int, path: Path) -> None:
    """Three circles (teacher top left, baseline top right, student bottom) with the seven
    exclusive region counts of ``comparison.venn_regions`` written inside them."""
    from matplotlib.patches import Circle

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    r = 1.0
    centers = {"teacher": (-0.55, 0.35), "baseline": (0.55, 0.35), "student": (0.0, -0.6)}
    for role, (x, y) in centers.items():
        ax.add_patch(Circle((x, y), r, facecolor=ROLE_COLORS[role], alpha=0.25, edgecolor=ROLE_COLORS[role], lw=2))
    labels = {  # (x, y) of each set's name, outside its circle
        "teacher": (-1.25, 1.5, "right"), "baseline": (1.25, 1.5, "left"), "student": (0.0, -1.78, "center"),
    }
    for role, (x, y, ha) in labels.items():
        ax.text(x, y, f"{role}\n{memorized[role]} memorized", ha=ha, va="center", fontsize=11,
                color=ROLE_COLORS[role], fontweight="bold")
    positions = {  # a point inside each exclusive region for this layout
        "teacher_only": (-0.95, 0.6), "baseline_only": (0.95, 0.6), "student_only": (0.0, -1.1),
        "teacher_baseline_only": (0.0, 0.75), "teacher_student_only": (-0.62, -0.38),
        "baseline_student_only": (0.62, -0.38), "all_three": (0.0, 0.03),
    }
    for key, (x, y) in positions.items():
        ax.text(x, y, str(venn[key]), ha="center", va="center", fontsize=14)
    outside = examples - sum(venn.values())
    ax.set_title(f"Memorized examples (exact match) of {examples} evaluated\n"
                 f"memorized by none of the three: {outside}", fontsize=12)
    ax.set_xlim(-2.3, 2.3)
    ax.set_ylim(-2.05, 1.85)
    ax.set_aspect("equal")
    ax.axis("off")
    save_figure(fig, path)


def zlib_histograms(zlib: np.ndarray, masks: dict[str, np.ndarray], path: Path) -> None:
    """One panel per model: zlib entropy of the examples that model memorized (filled) vs the rest
    (outline), each group normalised to sum to 1 (the groups differ a lot in size), medians dashed.

    zlib: (N,) bytes per evaluated example; masks: {role: (N,) bool memorized by that role}.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, len(masks), figsize=(4.4 * len(masks), 4.2), sharex=True, sharey=True,
                             squeeze=False)
    # about sqrt(N) bins: 128 examples -> 11 bins, not a comb of single examples
    bins = np.histogram_bin_edges(zlib, bins=int(np.clip(round(np.sqrt(len(zlib))), 5, 25)))
    for ax, (role, mask) in zip(axes[0], masks.items()):
        groups = (("memorized", mask, ROLE_COLORS[role], "stepfilled"), ("not memorized", ~mask, "0.2", "step"))
        for group, sel, color, kind in groups:
            values = zlib[sel]
            if len(values) == 0:
                continue
            median = float(np.median(values))
            ax.hist(values, bins=bins, weights=np.full(len(values), 1 / len(values)), color=color, histtype=kind,
                    alpha=0.6 if kind == "stepfilled" else 1.0, lw=1.8,
                    label=f"{group}: n = {len(values)}, median {median:.4g}")
            ax.axvline(median, color=color, ls="--", lw=1.5)
        ax.set_title(f"split by the {role}'s memorized set", fontsize=11)
        ax.set_xlabel("zlib entropy (bytes)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    axes[0][0].set_ylabel("share of the group's examples")
    fig.suptitle("zlib entropy of memorized vs not memorized examples (dashed lines: medians)")
    fig.tight_layout()
    save_figure(fig, path)


def roc_plot(curves: list[tuple[np.ndarray, np.ndarray]], mean_fpr: np.ndarray, mean_tpr: np.ndarray,
             auc_mean: float, auc_sd: float, test_size: float, path: Path) -> None:
    """Every repeat's held-out ROC curve (thin), their vertical average (thick) and chance."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 5.0))
    alpha = max(0.08, min(0.4, 4 / len(curves)))  # many repeats: faint, so their spread reads as a band
    for i, (fpr, tpr) in enumerate(curves):
        ax.plot(fpr, tpr, color="#1f77b4", alpha=alpha, lw=0.8, label="single repeats" if i == 0 else None)
    ax.plot(mean_fpr, mean_tpr, color="#d62728", lw=2.5,
            label=f"mean of {len(curves)} repeats\nAUC {auc_mean:.3f} ± {auc_sd:.3f} (sd)")
    ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title(f"Predicting student memorization\nROC on the held-out {round(100 * test_size)}% of each repeat")
    ax.legend(loc="lower right", fontsize=9)
    save_figure(fig, path)


def prefix_rate_plot(points: list[dict], path: Path) -> None:
    """Memorization rate (%) against prefix length, one line per model; points are dicts with
    role, prefix_len, suffix_len, rate (0..1), as in the report's ``prefix_len.points``.

    Models often share a rate (teacher and baseline alike), so each has its own marker, the
    teacher's a large hollow circle, and a coinciding point stays visible.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    lengths = sorted({p["prefix_len"] for p in points})
    style = {"teacher": dict(marker="o", ms=13, mfc="none", mew=2.2, lw=5, alpha=0.6),  # wide: seen under the others
             "baseline": dict(marker="s", ms=8, lw=2), "student": dict(marker="^", ms=8, lw=2)}
    for role in ROLE_COLORS:
        mine = sorted((p for p in points if p["role"] == role), key=lambda p: p["prefix_len"])
        if mine:
            ax.plot([p["prefix_len"] for p in mine], [100 * p["rate"] for p in mine], color=ROLE_COLORS[role],
                    label=role, **style[role])
    ax.set_xticks(lengths)
    if len(lengths) == 1:
        ax.set_xlim(lengths[0] - 1, lengths[0] + 1)
    ax.set_ylim(bottom=0, top=min(105.0, max(1.0, 1.2 * max(100 * p["rate"] for p in points))))
    ax.set_xlabel("prefix length (tokens)")
    ax.set_ylabel("memorized (% of examples, exact match)")
    suffixes = {p.get("suffix_len") for p in points}
    suffix = f", {suffixes.pop()}-token suffix" if len(suffixes) == 1 and None not in suffixes else ""
    ax.set_title(f"Memorization rate by prefix length{suffix}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    save_figure(fig, path)
