"""The miniature that the distillation benchmarks share: a GPT-NeoX teacher with a byte-level BPE
trained on the demo corpus (all but the held-out examples) and its store over the whole corpus.

``teacher_and_store(args, work, log)`` builds both once in ``work`` (reused by a rerun with the
same options): args.seq_len, held_out, teacher_vocab, teacher_hidden, teacher_layers,
teacher_epochs, top_k. Trainings run through the library ``distill`` (``train``), in-process.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def add_teacher_args(parser) -> None:
    """The options ``teacher_and_store`` reads (a benchmark's parser; defaults = the miniature)."""
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--teacher-vocab", type=int, default=1024)
    parser.add_argument("--teacher-hidden", type=int, default=128)
    parser.add_argument("--teacher-layers", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--top-k", type=int, default=32, help="the teacher's store: top-k entries (fp32 log-probs)")


def add_student_args(parser, epochs: int) -> None:
    """The students' shared options (hidden 64 x 2 layers on the first 256 examples, batch 16, lr 1e-3)."""
    parser.add_argument("--student-hidden", type=int, default=64)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--train-examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)


def student_exclude(args, work: Path, teacher_summary: dict) -> tuple[Path, int]:
    """(work/exclude.txt, the store's row count): the students train on the first --train-examples
    rows; the rest but the --held-out last ones (the teacher's held-out rows too) are excluded."""
    total = teacher_summary["examples"] + teacher_summary["held_out"]
    exclude = work / "exclude.txt"
    exclude.write_text("".join(f"{i}\n" for i in range(args.train_examples, total - args.held_out)))
    return exclude, total


def mean_sd(xs: list[float], digits: int = 4) -> dict:
    """Per-seed values → {"mean", "sd" (0 for one seed), "per_seed"}, rounded."""
    return {"mean": round(statistics.fmean(xs), digits), "sd": round(statistics.stdev(xs), digits) if len(xs) > 1 else 0.0,
            "per_seed": [round(x, digits) for x in xs]}


def config(directory: Path, tokenizer, *, vocab: int, hidden: int, layers: int, seq_len: int) -> Path:
    """A config-only GPT-NeoX (distill initialises it from its seed) with head dim 64 (vLLM's CPU backend)."""
    from benchmarks.fixtures import tiny_gpt_neox_config

    tiny_gpt_neox_config(vocab, hidden=hidden, layers=layers, positions=seq_len,
                         eos=tokenizer.eos_token_id).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def train(log: list, **opts) -> dict:
    """One ``distill`` run (DistillOptions fields as keywords) → its train summary, plus "cpu_s"."""
    from kdstream.distill.options import DistillOptions
    from kdstream.distill.trainer import train as distill

    start, cpu = time.perf_counter(), time.process_time()
    summary = distill(DistillOptions(tensorboard=False, verify_store=False, overwrite=True, **opts))
    # CPU seconds of every thread of this process (the loader's included): moved less than wall
    # time by other jobs on the machine (wall-clock step times swung 10x between runs), but still
    # moved (up to 4x): timings are only worth comparing from an idle machine
    summary["cpu_s"] = time.process_time() - cpu
    log.append({"out": opts["out"], "wall_s": round(time.perf_counter() - start, 1),
                "cpu_s": round(summary["cpu_s"], 1)})
    return summary


def teacher_and_store(args, work: Path, log: list) -> tuple[Path, Path, dict]:
    """(teacher dir, store, the teacher's train summary); reused when --work already holds them."""
    import numpy as np

    from kdstream.data.demo_corpus import demo_documents
    from kdstream.text.tokenizers import train_bpe_tokenizer

    teacher, store = work / "teacher", work / "store.zarr"
    summary_file = teacher / "train_summary.json"
    corpus = work / "corpus.jsonl"
    if summary_file.exists() and (store / "zarr.json").exists():
        log.append({"out": str(teacher), "reused": True})  # a --work of an earlier run with the same options
        return teacher, store, json.loads(summary_file.read_text())
    docs = demo_documents()
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = train_bpe_tokenizer(docs, args.teacher_vocab, work / "teacher_tokenizer")
    init = config(work / "teacher_init", tok, vocab=args.teacher_vocab, hidden=args.teacher_hidden,
                   layers=args.teacher_layers, seq_len=2 * args.seq_len)  # vLLM wants seq_len + 1
    summary = train(log, model=str(init), out=str(teacher), dataset=str(corpus), loss="ce", seq_len=args.seq_len,
                     eval_examples=args.held_out, epochs=args.teacher_epochs, batch_size=16, lr=2e-3,
                     warmup_ratio=0.05, seed=0)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kdstream", "precompute-logits", "--model", str(teacher),
                           "--dataset", str(corpus), "--out", str(store), "--top-k", str(args.top_k), "--seq-len",
                           str(args.seq_len), "--dtype", "float32", "--logprob-encoding", "fp32", "--batch-size", "64",
                           "--overwrite"], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"precompute-logits failed: {proc.stderr[-2000:]}")
    log.append({"out": str(store), "wall_s": round(time.perf_counter() - start, 1)})
    from kdstream.storage import open_store

    s = open_store(str(store))
    if len(s) != summary["examples"] + summary["held_out"]:
        raise SystemExit(f"the store has {len(s)} examples, the teacher's packing {summary['examples']} + "
                         f"{summary['held_out']}: the held-out rows would differ")
    ids = s.read(0, len(s), ("example_id",))["example_id"]
    if not np.array_equal(ids, np.arange(len(s))):
        raise SystemExit("store example ids are not row numbers: the exclude list below assumes they are")
    return teacher, store, summary


def run_reproduce(*args: str) -> list[str]:
    """``kdstream reproduce ARGS`` as the CLI runs it (one subprocess, vLLM's CPU KV cache at 1 GiB
    unless set): its command line; SystemExit with the end of its stderr when it fails."""
    cmd = [sys.executable, "-m", "kdstream", "reproduce", *args]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"kdstream reproduce failed: {proc.stderr[-2000:]}")
    return cmd
