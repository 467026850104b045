"""Step time of a cross-tokenizer ``distill`` at its default flags against the same-tokenizer KD step
(issue 41's "step time ÷ same-tokenizer KD step"), on the four tokenizer pairs of
benchmarks/cross_tokenizer_pairs.py (its teachers, stores and students, reused from --work).

Per pair and round, three runs of one seed, in this order each round:

    kd_same   the student of the teacher's tokenizer, distill's defaults (fused head)
    ce        the student of the other tokenizer, --loss ce (its own tokens of the same text)
    default   the student of the other tokenizer, distill's defaults (alm+exact, --alpha-ce 0.3, ...)

Figures: wall seconds per optimizer step of the training loop (train_summary.json "seconds" ÷
steps: no model load, no held-out evaluation), the median over --rounds; ``default ÷ kd_same`` is
the issue's ratio. The two students differ in vocabulary and in tokens per row (the same text cut by
another tokenizer), so ``default ÷ ce`` is also given: what the cross-tokenizer terms add to a step
of the same student. Run it on an idle machine: wall time moves with every other job.

    python -m benchmarks.cross_step_bench --work W [--pairs ...] [--rounds 3] [--epochs 4]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from benchmarks.cross_tokenizer_pairs import PAIRS, student, teacher_and_store, tokenizer
from benchmarks.cross_tokenizer_pairs import parse_args as pairs_args
from benchmarks.miniature import student_exclude, train
from benchmarks.results import save

ARMS = ("kd_same", "ce", "default")


def student_tokens_per_row(store: Path, teacher_tok, other_tok, rows: int) -> float:
    """Mean tokens of the other tokenizer over the store's first ``rows`` rows' text."""
    from kdstream.storage import open_store

    ids = open_store(str(store)).read(0, rows, ("input_ids",))["input_ids"]
    return statistics.fmean(len(other_tok(teacher_tok.decode(r), add_special_tokens=False)["input_ids"]) for r in ids)


def measure(args) -> dict:
    start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # the pairs benchmark's sizes (the same teachers and students), for --epochs epochs: longer runs than
    # its 2 settle the median of a step of a few tens of milliseconds
    pargs = pairs_args(["--work", str(work), "--epochs", str(args.epochs)])
    log: list = []
    out: dict = {}
    steps: set = set()  # optimizer steps of the counted runs, as their summaries say
    for p in args.pairs:
        t, o = PAIRS[p]
        teacher, store, summary = teacher_and_store(pargs, work, t, log)
        exclude, _ = student_exclude(pargs, work / "teachers" / t, summary)
        t_tok, o_tok = tokenizer(t, work), tokenizer(o, work)
        other = student(pargs, work, o)
        models = {"kd_same": student(pargs, work, t), "ce": other, "default": other}
        common = dict(logits_store=str(store), exclude=str(exclude), eval_examples=pargs.held_out,
                      epochs=pargs.epochs, batch_size=pargs.batch_size, lr=pargs.lr, seed=0)
        per: dict = {a: [] for a in ARMS}
        for r in range(args.rounds + 1):  # round 0 warms the caches and is not counted
            for arm in ARMS:
                extra = {"teacher_tokenizer": str(teacher)} if arm != "kd_same" else {}
                if arm == "ce":
                    extra["loss"] = "ce"
                s = train(log, model=str(models[arm]), out=str(work / "step_runs" / p / arm), **common, **extra)
                if r:
                    per[arm].append(s["seconds"] / s["steps"])
                    steps.add(s["steps"])
                print(f"{p} {arm} round {r}: {s['seconds'] / s['steps']:.4f} s/step", file=sys.stderr, flush=True)
        med = {a: statistics.median(v) for a, v in per.items()}
        out[p] = {"teacher": t, "student": o,
                  "vocab": {"kd_same": len(t_tok), "other": len(o_tok)},
                  "tokens_per_row": {"kd_same": pargs.seq_len,
                                     "other": round(student_tokens_per_row(store, t_tok, o_tok, pargs.train_examples), 1)},
                  "step_s": {a: round(v, 4) for a, v in med.items()},
                  "step_s_rounds": {a: [round(x, 4) for x in v] for a, v in per.items()},
                  "default_over_kd_same": round(med["default"] / med["kd_same"], 3),
                  "default_over_ce": round(med["default"] / med["ce"], 3),
                  "ce_over_kd_same": round(med["ce"] / med["kd_same"], 3)}
    return {"pairs": out, "rounds": args.rounds, "steps_per_run": sorted(steps),
            "batch_size": pargs.batch_size, "epochs": pargs.epochs,
            "student": {"hidden": pargs.student_hidden, "layers": pargs.student_layers},
            "max_default_over_kd_same": max(v["default_over_kd_same"] for v in out.values()),
            "max_default_over_ce": max(v["default_over_ce"] for v in out.values()),
            "total_wall_s": round(time.perf_counter() - start, 1), "runs": log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="cross_tokenizer_pairs' --work: its teachers, stores, students")
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each run over the 256 training rows")
    parser.add_argument("--name", default="cross_step_bench", help="results/NAME.json")
    args = parser.parse_args()
    save(args.name, measure(args))


if __name__ == "__main__":
    main()
