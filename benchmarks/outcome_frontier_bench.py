"""Outcome frontier on the miniature (issue 17 §3b): what a student trained from each kind of store
is worth against one distilled online from the loaded teacher, per byte of store.

The teacher of the cross-tokenizer benchmark (benchmarks/miniature.py: a GPT-NeoX trained with CE
on every example of the demo corpus but the last --held-out, ~10x the students' training set, so
it generalises beyond what the students see; the held-out examples no model ever trains on).
Students (hidden --student-hidden, the teacher's tokenizer, the same init per seed) train on the
corpus's first --train-examples examples for --epochs epochs, the same data order and steps in
every arm:

    ce            --loss ce (no teacher)
    online        --teacher TEACHER: dense KD over the full vocabulary, no store
    top-K         a store of the K most probable tokens per position (K in --top-ks)
    sampled-N     --targets sampled --samples N, trained with --loss ce_sampled
    budget-B      --budget B (--top-k 256 cap): B entries per position on average, where the mass is
    top-p-P       --top-p P (--top-k 256 cap)

KD arms use distill's defaults (forward KL, T = 2, no CE mixed in). Stores are written by
``precompute-logits`` (vLLM, fp32 engine, the default qdelta encoding) over the whole corpus.
Per arm and seed: held-out CE (nats/token, bits per byte: train_summary.json), held-out
KL(teacher ‖ student) over the full vocabulary (both models in fp32 on the held-out examples,
here), the store's bytes/token, entries and captured mass (store stats), precompute and training
wall time, and the memorization rate of the training set (``extract-eval --method fast --backend
hf``: greedy --prefix-len → --suffix-len exact match, teacher-forced in one pass).

    OMP_NUM_THREADS=2 python -m benchmarks.outcome_frontier_bench [--seeds 0 1 2] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.miniature import (
    add_student_args,
    add_teacher_args,
    config,
    mean_sd,
    student_exclude,
    teacher_and_store,
    train,
)
from benchmarks.results import RESULTS, save

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars in the log


def store_arms(args) -> dict[str, list[str]]:
    """arm → the precompute-logits flags of its store."""
    arms = {f"top-{k}": ["--top-k", str(k)] for k in args.top_ks}
    arms.update({f"sampled-{n}": ["--targets", "sampled", "--samples", str(n)] for n in args.samples})
    arms.update({f"budget-{b:g}": ["--budget", str(b), "--top-k", "256"] for b in args.budgets})
    arms.update({f"top-p-{p:g}": ["--top-p", str(p), "--top-k", "256"] for p in args.top_ps})
    return arms


def _cli(*args: str) -> None:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "kdstream", *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"kdstream {args[0]} failed: {proc.stderr[-2000:]}")


def _store(name: str, flags: list[str], teacher: Path, corpus: Path, work: Path, seq_len: int) -> dict:
    """Write (or reuse) the arm's store → its stats and precompute wall time."""
    from kdstream.storage.stats import store_stats

    out, record = work / "stores" / f"{name}.zarr", work / "stores" / f"{name}.json"
    if record.exists():  # written after a finished precompute only
        return json.loads(record.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _cli("precompute-logits", "--model", str(teacher), "--dataset", str(corpus), "--out", str(out), "--seq-len",
         str(seq_len), "--dtype", "float32", "--batch-size", "64", "--overwrite", *flags)
    wall = time.perf_counter() - start
    s = store_stats(str(out))
    info = {"store": str(out), "flags": flags, "precompute_s": round(wall, 1),
            "bytes_per_token": round(s["bytes_per_token"], 2), "entries_mean": round(s["entries_mean"], 2),
            "entries_p90": s["entries_p90"], "captured_mass": round(s["topk_mass_mean"], 4)}
    record.write_text(json.dumps(info, indent=1))
    return info


def held_out_kl(teacher: Path, student: Path, ids) -> float:
    """Mean KL(teacher ‖ student) in nats per position over the full vocabulary: ids (N, L) → both
    models' fp32 next-token distributions at every position but the last."""
    import torch
    from transformers import AutoModelForCausalLM

    models = [AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval() for d in (teacher, student)]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), 16):
            x = torch.as_tensor(ids[i:i + 16], dtype=torch.long)  # (B, L)
            lt, ls = (m(input_ids=x).logits[:, :-1].float().log_softmax(-1) for m in models)  # (B, L-1, V)
            total += float((lt.exp() * (lt - ls)).sum(-1).double().sum())
            count += lt.shape[0] * lt.shape[1]
    return total / count


def _memorization(run: Path, store: Path, args) -> dict:
    out = run / "extract"
    if not (out / "summary.json").exists():
        _cli("extract-eval", "--model", str(run), "--logits-store", str(store), "--out", str(out), "--max-examples",
             str(args.train_examples), "--prefix-len", str(args.prefix_len), "--suffix-len", str(args.suffix_len),
             "--method", "fast", "--backend", "hf", "--dtype", "float32", "--overwrite")
    s = json.loads((out / "summary.json").read_text())
    return {"memorized": s["memorized"], "rate": s["rate"]}



def _plot(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    arms = figures["arms"]
    for ax, key, label in ((a, "held_out_kl", "held-out KL(teacher ‖ student), nats/token"),
                           (b, "held_out_bits_per_byte", "held-out bits per byte")):
        for arm in arms:
            r = figures["results"][arm]
            x = r["store"]["bytes_per_token"] if r["store"] else 0.0
            ax.errorbar([x], [r[key]["mean"]], yerr=[r[key]["sd"]], fmt="o", capsize=3)
            ax.annotate(arm, (x, r[key]["mean"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xlabel("store bytes/token (0: no store)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Outcome frontier on the miniature ({len(figures['seeds'])} seeds, mean ± sd)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_teacher_args(parser)  # the teacher and its (top-32, fp32) base store, as the cross-tokenizer bench
    add_student_args(parser, epochs=16)
    parser.add_argument("--prefix-len", type=int, default=32)
    parser.add_argument("--suffix-len", type=int, default=16)
    parser.add_argument("--top-ks", type=int, nargs="*", default=[1, 4, 16, 64])
    parser.add_argument("--samples", type=int, nargs="*", default=[8, 32, 64])
    parser.add_argument("--budgets", type=float, nargs="*", default=[16.0, 40.0])
    parser.add_argument("--top-ps", type=float, nargs="*", default=[0.9])
    parser.add_argument("--work", help="Keep the teacher, stores and runs here (reused by a rerun).")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        log: list = []
        teacher, base, t_summary = teacher_and_store(args, work, log)
        corpus = work / "corpus.jsonl"
        from kdstream.storage import open_store
        from kdstream.text.tokenizers import load_tokenizer

        student = config(work / "student_same", load_tokenizer(teacher), vocab=args.teacher_vocab,
                         hidden=args.student_hidden, layers=args.student_layers, seq_len=2 * args.seq_len)
        exclude, total = student_exclude(args, work, t_summary)
        held = open_store(str(base)).read(total - args.held_out, total, ("input_ids",))["input_ids"]  # (H, L)
        stores = {arm: _store(arm, flags, teacher, corpus, work, args.seq_len) for arm, flags in store_arms(args).items()}
        arms = ["ce", "online", *stores]
        common = dict(exclude=str(exclude), eval_examples=args.held_out, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, model=str(student))
        runs: dict = {arm: {} for arm in arms}
        for seed in args.seeds:
            for arm in arms:
                out = work / "runs" / f"{arm}-seed{seed}"
                if arm == "ce":
                    opts = {"logits_store": str(base), "loss": "ce"}
                elif arm == "online":  # the corpus packed as the stores are: the same examples, same order
                    opts = {"teacher": str(teacher), "dataset": str(corpus), "seq_len": args.seq_len}
                else:
                    opts = {"logits_store": stores[arm]["store"],
                            **({"loss": "ce_sampled"} if arm.startswith("sampled") else {})}
                s = train(log, out=str(out), seed=seed, **common, **opts)
                kl = held_out_kl(teacher, out, held)
                mem = _memorization(out, base, args)
                runs[arm][seed] = {"held_out_nats_per_token": s["held_out_nats_per_token"],
                                   "held_out_bits_per_byte": s["held_out_bits_per_byte"], "held_out_kl": kl,
                                   "steps": s["steps"], "train_s": s["seconds"], **mem}
                print(f"{arm} seed {seed}: KL {kl:.4f}, {s['held_out_bits_per_byte']:.4f} bits/byte, "
                      f"memorized {mem['memorized']}", file=sys.stderr)
        results = {}
        for arm in arms:
            per = [runs[arm][s] for s in args.seeds]
            results[arm] = {key: mean_sd([r[key] for r in per]) for key in
                            ("held_out_kl", "held_out_nats_per_token", "held_out_bits_per_byte", "rate", "train_s")}
            results[arm]["store"] = stores.get(arm)
            results[arm]["steps"] = sorted({r["steps"] for r in per})
        online = results["online"]["held_out_kl"]["mean"]
        default = "top-64" if "top-64" in stores else None  # precompute-logits' default: --top-k 64, qdelta
        figures = {
            "seeds": args.seeds, "arms": arms, "seq_len": args.seq_len, "train_examples": args.train_examples,
            "held_out_examples": args.held_out, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "kd": "distill defaults: forward_kl, T = 2, alpha_ce 0", "prefix_len": args.prefix_len,
            "suffix_len": args.suffix_len,
            "teacher": {"vocab": args.teacher_vocab, "hidden": args.teacher_hidden, "layers": args.teacher_layers,
                        "train_examples": t_summary["examples"],
                        "held_out_bits_per_byte": round(t_summary["held_out_bits_per_byte"], 4)},
            "students": {"hidden": args.student_hidden, "layers": args.student_layers},
            "results": results,
            "ce_vs_online_separated": {
                "kl_gap": round(results["ce"]["held_out_kl"]["mean"] - online, 4),
                "larger_sd": max(results["ce"]["held_out_kl"]["sd"], results["online"]["held_out_kl"]["sd"])},
            "runs": {arm: {str(s): r for s, r in v.items()} for arm, v in runs.items()},
            "wall_s": log,
        }
        if default:
            ratio = results[default]["held_out_kl"]["mean"] / online
            figures["targets"] = {"default_store_kl_over_online": {"store": default, "target": "<= 1.05",
                                                                   "measured": round(ratio, 4), "met": ratio <= 1.05}}
        _plot(figures, RESULTS / "outcome_frontier_bench.png")
        figures["plot"] = "outcome_frontier_bench.png"
        figures["total_wall_s"] = round(time.perf_counter() - start, 1)
        save("outcome_frontier_bench", figures)


if __name__ == "__main__":
    main()
