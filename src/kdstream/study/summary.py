"""The study report: every seed's ``figures.json`` → mean ± sd → ``study.json``, ``study.md``
(the paper's table beside ours, with verdicts; memorization against canary duplication) and
``canaries.png``. Everything comes from the run's outputs; nothing is typed in."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from kdstream.study.intervals import LEVEL, MIN_WINDOWS, REPLICATES
from kdstream.study.paper import findings, forks_counted

STUDY_JSON, STUDY_MD, CANARY_PNG = "study.json", "study.md", "canaries.png"
CANARY_ROLES = ("teacher", "baseline", "student", "student_filtered")


def stat(values) -> dict:
    """{mean, sd (sample, 0 for one value), n, sum, values} of the non-NaN values."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0, "sum": 0.0, "values": []}
    a = np.asarray(vals)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a),
            "sum": float(a.sum()), "values": vals}


def aggregate(figs: list[dict]) -> dict:
    """Mean ± sd over seeds of every figure the report shows."""
    roles = ("teacher", "baseline", "student")
    agg: dict = {
        "seeds": len(figs),
        "examples": figs[0]["examples"],
        "memorized": {r: stat(f["memorized"][r] for f in figs) for r in roles},
        "rate": {r: stat(f["rate"][r] for f in figs) for r in roles},
    }
    for key in ("student_over_baseline", "teacher_only", "teacher_only_inherited", "student_also_by_both",
                "teacher_only_at_fork", "teacher_only_inherited_at_fork"):
        agg[key] = stat(f.get(key) for f in figs)
    # each seed's windows by which models memorized them: the findings' bootstrap (study/intervals.py)
    agg["windows"] = [f["windows"] for f in figs] if all(f.get("windows") for f in figs) else None
    fitted = [f["classifier"] for f in figs if f.get("classifier")]
    agg["classifier"] = {
        "auc": stat(c["auc"]["mean"] for c in fitted),
        "auc_sd_within": fitted[0]["auc"]["sd"],  # over the classifier's repeats (shown for one seed)
        "coefficients": {k: stat(c["coefficients"][k] for c in fitted) for k in fitted[0]["coefficients"]},
        "positives": stat(c.get("positives") for c in fitted),
        "repeats": [c.get("repeats") for c in fitted],  # every split's AUC and coefficients, per seed
    } if fitted else None
    filtered = [f["filter"] for f in figs if f.get("filter")]
    agg["filter"] = {k: stat(x[k] for x in filtered) for k in filtered[0]} if filtered else None
    with_canaries = [f["canaries"] for f in figs if f.get("canaries")]
    if with_canaries:
        agg["canaries"] = {}
        for role in CANARY_ROLES:
            per = [c[role] for c in with_canaries if role in c]
            if per:
                agg["canaries"][role] = {cnt: {"rate": stat(p[cnt]["rate"] for p in per), "canaries": per[0][cnt]["canaries"]}
                                         for cnt in per[0]}
    else:
        agg["canaries"] = None
    from kdstream.study.arms import aggregate_arms

    if any(f.get("arms") for f in figs):  # only then: a study without arms keeps its aggregate
        agg["arms"] = aggregate_arms(figs, stat)
    if figs[0].get("student_tokenizer"):  # a study across tokenizers (study/student_tokenizer.py)
        agg["student_tokenizer"] = figs[0]["student_tokenizer"]
    return agg


def canary_rows(agg: dict) -> tuple[list[str], list[dict]]:
    """(duplication counts, rows {role, rates by count, verdict}) for the canary table."""
    can = agg["canaries"]
    counts = sorted({c for r in can.values() for c in r}, key=int)
    rows = []
    for role, by_count in can.items():
        means = [by_count[c]["rate"]["mean"] for c in counts if c in by_count]
        rows.append({"role": role, "rates": {c: by_count[c]["rate"] for c in counts if c in by_count},
                     "rises": "yes" if means[-1] > means[0] else ("no (flat)" if means[-1] == means[0] else "no")})
    return counts, rows


def _fmt_rate(s: dict) -> str:
    if s["n"] == 0:
        return "n/a"
    return f"{100 * s['mean']:.0f}%" + (f" ± {100 * s['sd']:.0f}" if s["n"] > 1 else "")


def _examples(cfg: dict, agg: dict) -> str:
    if agg.get("conversations"):
        return (f"{agg['examples']} conversations of at most {cfg['seq_len']} tokens (one example each, the loss "
                "on the assistant's tokens; a \"window\" below is a conversation)")
    return f"{agg['examples']} examples of {cfg['seq_len']} tokens"


def _extraction(cfg: dict, agg: dict) -> str:
    if agg.get("conversations"):
        return f"from each conversation's prompt → the first {cfg['suffix_len']} tokens of its first answer"
    return f"{cfg['prefix_len']} → {cfg['suffix_len']} tokens"


def format_study(cfg: dict, agg: dict, rows: list[dict]) -> str:
    seeds = agg["seeds"]
    n_seeds = f"{seeds} seed{'s' if seeds > 1 else ''}" + (" (mean ± sd)" if seeds > 1 else "")
    lines = [
        "# Memorization in distillation: the paper's findings beside this run",
        "",
        f"This run: teacher `{cfg['teacher_model']}`, student `{cfg['student_model']}`, {_examples(cfg, agg)} from "
        f"`{cfg['dataset']}`, epochs {cfg['teacher_epochs']} (teacher) / "
        f"{cfg['student_epochs']} (baseline, student), lr {cfg.get('teacher_lr') or cfg['lr']:g} / {cfg['lr']:g}, "
        f"KD `{cfg['loss']}` at T = {cfg['temperature']}, greedy {_extraction(cfg, agg)}, exact match; {n_seeds}.",
        "Paper: Pythia-12B teacher, Pythia-1.4B baseline and student, 1M FineWeb examples of 256 tokens, 50 → 50 tokens.",
        *_across_lines(cfg, agg.get("student_tokenizer")),
        "",
        f"| finding | paper | this run | {100 * LEVEL:.0f}% interval (counts) | criterion | verdict |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['finding']} | {r['paper']} | {r['ours']} | {_interval_cell(r)} | {r['criterion']} | "
              f"{r['verdict']} |" for r in rows]
    ok = [r["finding"] for r in rows if r["verdict"] == "reproduced"]
    direction = [r["finding"] for r in rows if r["verdict"] == "direction only"]
    bad = [r["finding"] for r in rows if r["verdict"] == "not reproduced"]
    untested = [r["finding"] for r in rows if r["verdict"].startswith("not testable")]
    lines += ["", f"Reproduced here: {len(ok)} of {len(rows)} findings" + (f" ({'; '.join(ok)})." if ok else ".")]
    if direction:
        lines.append(f"Direction only (the figure meets the criterion, its interval does not clear it): "
                     f"{'; '.join(direction)}.")
    if bad:
        lines.append(f"Not reproduced: {'; '.join(bad)}.")
    if untested:
        lines.append(f"Not testable in this run: {'; '.join(untested)}.")
    lines.append("The criteria test each finding's direction, not its size (see kdstream/study/paper.py). "
                 f"A finding counts as reproduced only when its {100 * LEVEL:.0f}% interval clears the criterion: "
                 f"a bootstrap over the training windows{' and the seeds' if seeds > 1 else ''} "
                 f"({REPLICATES} resamples, fixed generator; shares widened to the Wilson interval where that is "
                 "wider), the classifier's over its random splits; a finding with fewer than "
                 f"{MIN_WINDOWS} windows to count is not testable (kdstream/study/intervals.py).")
    if forks_counted(agg) and agg["teacher_only_inherited"]["sum"]:  # the inherited row names them
        lines.append("A fork between near-duplicates: where the CE baseline's greedy decoding left the suffix, the text "
                     "before that point and the baseline's continuation occur together in another training window "
                     "(two texts that share a phrase, then part). The baseline fits such a window but took the other "
                     "branch; the teacher resolved it from the earlier context and the student learned that from it "
                     "(kdstream/analysis/forks.py). The paper's teacher-only examples are the ones its baseline lacks "
                     "the capacity for.")
    if agg.get("conversations"):
        lines += ["", "No canaries on conversations: a planted canary would be a conversation of its own, which the "
                  "protocol does not make (kdstream/study/conversations.py)."]
    if agg.get("canaries"):
        counts, crow = canary_rows(agg)
        per = next(iter(agg["canaries"].values()))
        lines += ["", "## Canaries: extraction rate against duplication count", "",
                  f"Random-word canaries of {cfg['canary_prefix_len']} + {cfg['canary_suffix_len']} tokens, "
                  f"{per[counts[0]]['canaries']} per count, planted whole in the training windows (teacher-forced "
                  "fast path: the same verdict as greedy decoding" + ("; the models of the student tokenizer: greedy "
                  "decoding judged on bytes" if agg.get("student_tokenizer") else "") + ").", "",
                  "| model | " + " | ".join(f"×{c}" for c in counts) + " | rises with duplication |",
                  "|---|" + "---|" * (len(counts) + 1)]
        for r in crow:
            lines.append(f"| {r['role']} | " + " | ".join(_fmt_rate(r["rates"][c]) if c in r["rates"] else "n/a"
                                                          for c in counts) + f" | {r['rises']} |")
        lines += ["", f"![canaries]({CANARY_PNG})"]
    from kdstream.study.arms import format_arms

    lines += format_arms(cfg, agg)
    lines += ["", "Per-seed outputs: `seed-*/report/report.md` (Venn diagram, zlib histograms, ROC curve), "
              "`seed-*/figures.json`."]
    return "\n".join(lines) + "\n"


def _interval_cell(row: dict) -> str:
    text = row.get("interval_text") or "n/a"
    return text + (f" ({row['counts']})" if row.get("counts") else "")


def _across_lines(cfg: dict, facts: dict | None) -> list[str]:
    """The study.md paragraph of a run whose students have another tokenizer than the teacher's."""
    if not facts:
        return []
    modes = ", ".join(f"{r} `{m}`" for r, m in facts["distill"].items())
    skipped = ", ".join(f"{r} {e['skipped']}" for r, e in facts["eval"].items() if e.get("match_on") == "bytes")
    name = cfg.get("student_tokenizer") or "the student model's own"
    return ["", f"**Student tokenizer differs from the teacher's**: `{name}` "
            f"({facts['student_vocab']} tokens; the teacher's: {facts['teacher_vocab']}). The baseline and the students "
            f"train on their own tokens of the store's examples (distill across tokenizers: {modes}; `ce` = CE on the "
            "student's tokens only). Memorization of the teacher is judged on tokens; of the baseline and the students "
            "on bytes: the prefix cut in the teacher's tokens, re-tokenized, greedy decoding, exact match iff the "
            "generated bytes start with the suffix's bytes (examples that could not be judged count as not "
            f"extracted: {skipped or 'none'}). The classifier reads byte-based features (teacher and baseline bits per "
            "byte, the teacher–baseline log-likelihood ratio per byte, zlib), per-token perplexities and the top-k KL "
            "not being comparable across tokenizers."]


def canary_plot(agg: dict, path: Path) -> None:
    from kdstream.analysis.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = {"teacher": "#1f77b4", "baseline": "#ff7f0e", "student": "#2ca02c", "student_filtered": "#9467bd"}
    markers = {"teacher": "o", "baseline": "s", "student": "^", "student_filtered": "v"}
    counts = sorted({int(c) for r in agg["canaries"].values() for c in r})
    for i, (role, by_count) in enumerate(agg["canaries"].items()):
        cs = sorted(by_count, key=int)
        x = np.asarray([int(c) for c in cs], float) * (1 + 0.03 * (i - 1.5))  # small offset: coinciding lines stay visible
        y = [100 * by_count[c]["rate"]["mean"] for c in cs]
        err = [100 * by_count[c]["rate"]["sd"] for c in cs]
        ax.errorbar(x, y, yerr=err if agg["seeds"] > 1 else None, color=colors.get(role), marker=markers.get(role),
                    ms=7, lw=2, capsize=3, label=role.replace("_", " "))
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_ylim(-3, 103)
    ax.set_xlabel("copies of the canary in the training data")
    ax.set_ylabel("canaries extracted (%, exact match)")
    ax.set_title("Canary extraction rate by duplication count")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    save_figure(fig, path)


def write_study_report(out: Path, cfg: dict, figs: list[dict]) -> dict:
    agg = aggregate(figs)
    if any(f.get("conversations") for f in figs):  # only then: a text study's report stays as it was
        agg["conversations"] = True
    rows = findings(agg)
    result = {"config": cfg, "aggregate": agg, "findings": rows, "seeds": figs}
    if agg.get("canaries"):
        canary_plot(agg, out / CANARY_PNG)
    tmp = out / (STUDY_JSON + ".partial")
    tmp.write_text(json.dumps(result, indent=2, default=float))
    tmp.replace(out / STUDY_JSON)
    (out / STUDY_MD).write_text(format_study(cfg, agg, rows))
    return result
