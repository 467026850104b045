"""Why the miniature's student inherits more of the teacher-only windows than the paper's (12%
against ≤ 10%; the paper: 0.9%), per seed of a finished study (--work, as `study_bench` or
`kdstream reproduce` leaves it).

1. Forks (no training). A teacher-only window is one the teacher recites and the CE baseline
   does not. Where the baseline's greedy decoding departs from the window's suffix, does it go on
   as another training window does (the 4 tokens before the departure and up to 8 it generated
   occur together in another window)? Then the baseline is at a fork between near-duplicate texts
   (MIT's "LIABLE FOR ANY CLAIM" against BSD's "LIABLE FOR ANY DIRECT") and took the other branch.
   (4, not 8: the texts share a phrase of a few tokens, not a whole line, before they part.) Also
   the baseline's perplexity on each group: a baseline that fits a window as well as the windows
   all three models recite, yet misses it, lost it at a fork, not for want of capacity.
2. Student-side variants (--variants, trains): the seed's teacher store and CE baseline kept, the
   KD student retrained with one knob changed, extract-eval'd and compared:
   ``T4`` (temperature 4), ``top64`` (a top-64 store of the same teacher), ``lr7e-4`` (the
   student at the teacher's lr), ``student2x192`` (a 2-layer student and baseline, both retrained),
   ``teacher6x384`` (the 8x ``small-teacher`` retrained, its store and student; the default baseline).
   Each variant's outputs go under W/inheritance/seed-S/NAME (resumed when finished).

    python -m benchmarks.inheritance_bench --work W [W2 ...] [--seeds 2] [--variants T4,top64,...] [--name inheritance_bench]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.results import save
from kdstream.analysis.compare import compare_sets, memorized_ids
from kdstream.analysis.forks import AHEAD, CONTEXT, at_a_fork, baseline_departures, count_forks, store_chunks
from kdstream.distill.trainer import DONE_FILE
from kdstream.extract.results import RESULTS_FILE, SUMMARY_FILE
from kdstream.study.config import TINY_ARCHS, StudyConfig, load_study_config
from kdstream.study.stages import store_complete

VARIANTS = ("T4", "top64", "lr7e-4", "student2x192", "teacher6x384")


def forks(d: Path) -> dict:
    """Fork analysis of one seed directory's teacher-only windows (docstring, 1; the test itself:
    kdstream/analysis/forks.py, as `kdstream compare` records it)."""
    import pandas as pd

    sets = {r: memorized_ids(d / "eval" / r)[0] for r in ("teacher", "baseline", "student")}
    only = sets["teacher"] - sets["baseline"]
    got = baseline_departures(d / "eval" / "baseline", only)
    if isinstance(got, str):
        raise SystemExit(f"{d}: {got}")
    departures, store = got
    forked = at_a_fork(departures, store_chunks(store, "forks"))
    base = pd.read_parquet(d / "eval" / "baseline" / RESULTS_FILE).set_index("example_id")
    ppl = pd.read_parquet(d / "eval" / "baseline" / "features" / "features.parquet").set_index("example_id")["ppl"]
    groups = {"inherited": only & sets["student"], "not_inherited": only - sets["student"],
              "all_three": sets["teacher"] & sets["baseline"] & sets["student"]}
    out: dict = {}
    for name, ids in groups.items():
        members, ids = ids, sorted(ids)
        row = {"windows": len(ids), "baseline_ppl_median": round(float(ppl.loc[ids].median()), 3) if ids else None}
        if name != "all_three":
            counted = count_forks([x for x in departures if x.example_id in members], forked)
            departed = [int(base.at[i, "generate_prefix_match_len"]) for i in ids]  # suffix tokens it got right
            row.update({"baseline_at_a_fork": counted["at_fork"], "distinct_forks": counted["distinct_forks"],
                        "departure_suffix_token_median": float(np.median(departed)) if departed else None})
        out[name] = row
    return {"teacher_only": len(only), "inherited": len(groups["inherited"]), "groups": out}


def _run(args: list[str], log: Path) -> None:
    with log.open("a") as f:
        subprocess.run([sys.executable, "-m", "kdstream", *args], check=True, stdout=f, stderr=subprocess.STDOUT)


def _init(src: Path, out: Path, arch: dict) -> str:
    """A copy of the study's init directory (config + tokenizer) at another GPT-NeoX size."""
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "config.json":
            (out / f.name).write_bytes(f.read_bytes())
    config = json.loads((src / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **arch}, indent=1))
    return str(out)


def variant(work: Path, cfg: StudyConfig, d: Path, seed: int, name: str) -> dict:
    """Retrain what ``name`` changes (docstring, 2) and compare with the seed's own evals."""
    v = work / "inheritance" / d.name / name
    v.mkdir(parents=True, exist_ok=True)
    log, t0 = v / "log.txt", time.time()
    store, init, lr, temperature = d / "teacher.zarr", str(work / "init" / "student"), cfg.lr, cfg.temperature
    teacher_eval, baseline_eval = d / "eval" / "teacher", d / "eval" / "baseline"
    common = ["--batch-size", str(cfg.batch_size), "--seed", str(seed), "--resume", *cfg.train_args]
    train = ["--epochs", str(cfg.student_epochs), *common]
    evaluate = ["--prefix-len", str(cfg.prefix_len), "--suffix-len", str(cfg.suffix_len), "--method",
                "generate", "--backend", cfg.eval_backend, *cfg.eval_args]

    def trained(role: str) -> bool:
        return (v / role / DONE_FILE).exists()

    def precompute(model: Path, out: Path, top_k: int) -> None:
        if not store_complete(out):
            _run(["precompute-logits", "--model", str(model), "--dataset", str(d / "corpus.jsonl"), "--text-field",
                  "text", "--out", str(out), "--top-k", str(top_k), "--seed", str(seed), "--seq-len", str(cfg.seq_len),
                  "--max-examples", str(cfg.examples), *cfg.precompute_args], log)

    def eval_model(role: str, with_store: Path) -> Path:
        out = v / "eval" / role
        if not (out / SUMMARY_FILE).exists():
            _run(["extract-eval", "--model", str(v / role), "--logits-store", str(with_store), "--out", str(out), *evaluate], log)
        return out

    if name == "T4":
        temperature = 4.0
    elif name == "lr7e-4":
        lr = 7e-4
    elif name == "top64":
        store = v / "teacher64.zarr"
        precompute(d / "teacher", store, 64)
    elif name == "student2x192":
        init = _init(work / "init" / "student", v / "init", {"num_hidden_layers": 2})
        if not trained("baseline"):
            _run(["distill", "--model", init, "--logits-store", str(store), "--loss", "ce", "--out", str(v / "baseline"),
                  "--lr", str(lr), *train], log)
        baseline_eval = eval_model("baseline", store)
    elif name == "teacher6x384":  # main() refuses any other name
        tinit = _init(work / "init" / "teacher", v / "init", TINY_ARCHS["small-teacher"])
        if not trained("teacher"):
            _run(["distill", "--model", tinit, "--dataset", str(d / "corpus.jsonl"), "--text-field", "text", "--loss", "ce",
                  "--out", str(v / "teacher"), "--seq-len", str(cfg.seq_len), "--max-examples", str(cfg.examples),
                  "--lr", str(cfg.teacher_lr or cfg.lr), "--epochs", str(cfg.teacher_epochs), *common], log)
        store = v / "teacher.zarr"
        precompute(v / "teacher", store, cfg.top_k)
        teacher_eval = eval_model("teacher", store)
    if not trained("student"):
        _run(["distill", "--model", init, "--logits-store", str(store), "--loss", cfg.loss, "--temperature",
              str(temperature), "--out", str(v / "student"), "--lr", str(lr), *train], log)
    student_eval = eval_model("student", store)
    sets = [memorized_ids(p)[0] for p in (teacher_eval, baseline_eval, student_eval)]
    cmp = compare_sets(*sets, memorized_ids(student_eval)[1])
    return {"memorized": cmp["memorized"], "teacher_only": cmp["teacher_only"],
            "inherited": cmp["teacher_only_inherited_by_student"],
            "inherited_share": round(cmp["teacher_only_inherited_by_student"] / max(cmp["teacher_only"], 1), 4),
            "student_over_baseline": round(cmp["student_over_baseline"], 3), "seconds": round(time.time() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, nargs="+",
                        help="finished studies' --out (each holds config.yaml, init/, seed-S/)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: every seed-S in the --work)")
    parser.add_argument("--variants", default="", help=f"comma-separated, of {', '.join(VARIANTS)} (trains; default none)")
    parser.add_argument("--name", default="inheritance_bench")
    args = parser.parse_args()
    dirs = [(Path(w), d) for w in args.work for d in Path(w).glob("seed-*")]
    if args.seeds:
        dirs = [(w, d) for w, d in dirs if d.name.split("-")[1] in args.seeds.split(",")]
    if not dirs:  # no figures: save nothing rather than an empty result that looks complete
        parser.error(f"no seed-S directories in {' '.join(args.work)}: pass finished studies' --out")
    dirs.sort(key=lambda wd: int(wd[1].name.split("-")[1]))
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:  # before any seed's work, not after it
        parser.error(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    figures: dict = {"work": args.work, "context_tokens": CONTEXT, "ahead_tokens": AHEAD, "seeds": {}}
    for work, d in dirs:
        seed, cfg = int(d.name.split("-")[1]), load_study_config(str(work / "config.yaml"), {})
        cmp = json.loads((d / "compare" / "comparison.json").read_text())
        row = {"study": {"memorized": cmp["memorized"], "teacher_only": cmp["teacher_only"],
                         "inherited": cmp["teacher_only_inherited_by_student"]},
               "forks": forks(d)}
        if names:
            row["variants"] = {n: variant(work, cfg, d, seed, n) for n in names}
        figures["seeds"][d.name] = row
        print(json.dumps({d.name: row}))
    groups = [r["forks"]["groups"] for r in figures["seeds"].values()]
    figures["total"] = {g: {k: sum(x[g][k] for x in groups) for k in ("windows", "baseline_at_a_fork", "distinct_forks")}
                        for g in ("inherited", "not_inherited")}
    save(args.name, figures)


if __name__ == "__main__":
    main()
