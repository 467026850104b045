"""How the share of the same-tokenizer KD gain that crosses tokenizers depends on --alpha-ce
(cross_tokenizer_bench.py at several CE weights; every KD arm at the same weight).

At each --alpha-ce value: ce_same, kd_same, ce_other and the exact arms, --seeds each, on one
teacher and store (--work). Per value: the same-tokenizer KD gain (CE → KD, bits/byte), each
cross-tokenizer arm's gain over its CE (ce_other) and their ratio, the share; and across values,
the best same-tokenizer gain against the best cross-tokenizer one (each at its own weight).

    OMP_NUM_THREADS=1 python -m benchmarks.research.cross_tokenizer_alpha_sweep [--alphas 0.3 0.5 0.6 0.7 0.8] [--work DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from benchmarks.cross_tokenizer_bench import measure, parse_args
from benchmarks.results import RESEARCH_RESULTS, save

ARMS = ("ce_same", "kd_same", "ce_other", "exact", "exact_prefix")
CROSS = ("exact", "exact_prefix")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", help="The teacher and store, shared by every value (kept; reused by a rerun)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        points = {}
        for alpha in args.alphas:
            bench = parse_args(["--work", work, "--alpha-ce", str(alpha), "--temperature", str(args.temperature),
                                "--seeds", *map(str, args.seeds), "--arms", *ARMS])
            f = measure(bench)
            t = f["targets"]
            points[str(alpha)] = {
                "held_out_bits_per_byte": f["held_out_bits_per_byte"],
                "same_tokenizer_kd_gain_bpb": t["same_tokenizer_kd_gain_bpb"],
                **{arm: {"gain_bpb": t[arm]["share_of_kd_gain_recovered"]["gain_bpb"],
                         "share": t[arm]["share_of_kd_gain_recovered"]["measured"],
                         "better_than_ce_other_every_seed": t[arm]["better_than_ce_other_every_seed"]["measured"]}
                   for arm in CROSS},
            }
            print(f"alpha_ce {alpha}: same-tokenizer gain {t['same_tokenizer_kd_gain_bpb']}, shares "
                  + ", ".join(f"{arm} {points[str(alpha)][arm]['share']}" for arm in CROSS), file=sys.stderr)
    best_same = max(points.items(), key=lambda kv: kv[1]["same_tokenizer_kd_gain_bpb"])
    best_cross = max(((a, arm, p[arm]["gain_bpb"]) for a, p in points.items() for arm in CROSS), key=lambda x: x[2])
    figures = {
        "temperature": args.temperature, "seeds": args.seeds, "arms": list(ARMS), "points": points,
        "best_same_tokenizer": {"alpha_ce": float(best_same[0]), "gain_bpb": best_same[1]["same_tokenizer_kd_gain_bpb"]},
        "best_cross_tokenizer": {"alpha_ce": float(best_cross[0]), "arm": best_cross[1], "gain_bpb": best_cross[2]},
        "best_over_best_share": round(best_cross[2] / best_same[1]["same_tokenizer_kd_gain_bpb"], 3),
        "matched_share_at_least_0_5": {a: [arm for arm in CROSS if (p[arm]["share"] or 0) >= 0.5
                                           and p[arm]["better_than_ce_other_every_seed"]] for a, p in points.items()},
    }
    save("cross_tokenizer_alpha_sweep", figures, RESEARCH_RESULTS)


if __name__ == "__main__":
    main()
