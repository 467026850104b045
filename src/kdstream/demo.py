"""The miniature study behind `make demo`: the paper's protocol on the embedded corpus.

Each stage runs the same CLI command a user would type (printed before it runs), in a
subprocess, and is skipped when its finished output already exists, so an interrupted demo
resumes where it stopped.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kdstream.errors import KdError
from kdstream.options import require, save_options

# Sized for a 2-core CPU: big enough to memorize, small enough to finish in minutes.
TEACHER = dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
STUDENT = dict(num_hidden_layers=3, hidden_size=192, num_attention_heads=3, intermediate_size=768)
VOCAB = 4096


@dataclass(frozen=True)
class DemoOptions:
    out: str = "runs/demo"
    examples: int = 128
    seq_len: int = 128
    epochs: int = 22
    top_k: int = 16
    prefix_len: int = 32
    suffix_len: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.prefix_len + self.suffix_len <= self.seq_len,
                f"--prefix-len + --suffix-len ({self.prefix_len + self.suffix_len}) must fit in --seq-len {self.seq_len}")
        require(self.examples >= 1 and self.epochs >= 1, "--examples and --epochs must be at least 1")


def _init_model(directory: Path, arch: dict, seq_len: int, tokenizer) -> None:
    """A config-only GPT-NeoX directory (random init at train time) with the shared tokenizer."""
    from transformers import GPTNeoXConfig

    if (directory / "config.json").exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    GPTNeoXConfig(
        vocab_size=VOCAB, max_position_embeddings=2 * seq_len,  # room for vLLM's extra token
        rotary_pct=0.25, use_parallel_residual=True,
        tie_word_embeddings=False, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        **arch,
    ).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def _stage(name: str, done: bool, args: list[str], timings: dict) -> None:
    if done:
        print(f"[demo] {name}: already done, skipping", file=sys.stderr)
        timings[name] = 0.0
        return
    print(f"[demo] {name}: kdstream {' '.join(args)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "kdstream", *args])
    if result.returncode != 0:
        raise KdError(f"demo stage {name} failed (exit {result.returncode}); fix the error above and rerun to resume")
    timings[name] = round(time.perf_counter() - start, 1)


def _store_complete(path: Path) -> bool:
    from kdstream.storage import open_store

    try:
        open_store(str(path))  # refuses a missing or unfinished store
    except KdError:
        return False
    return True


def run_demo(opts: DemoOptions) -> dict:
    from kdstream.data.demo_corpus import demo_documents
    from kdstream.data.tokenizer import load_tokenizer, train_bpe_tokenizer
    from kdstream.distill.trainer import DONE_FILE
    from kdstream.evaluate.compare import compare_sets, format_table, memorized_ids
    from kdstream.evaluate.extraction import SUMMARY_FILE
    from kdstream.evaluate.study_dirs import CLASSIFICATION_FILE

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    save_options(opts, out)
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = load_tokenizer(tok_dir)
    else:
        print("[demo] training a BPE tokenizer on the embedded corpus", file=sys.stderr)
        tokenizer = train_bpe_tokenizer(demo_documents(), VOCAB, tok_dir)
    _init_model(out / "init" / "teacher", TEACHER, opts.seq_len, tokenizer)
    _init_model(out / "init" / "student", STUDENT, opts.seq_len, tokenizer)

    common = ["--seq-len", str(opts.seq_len), "--max-examples", str(opts.examples)]
    # lr 3e-3, batch 8, 128 examples: measured here with the fast path (EOS counted), 40 epochs
    # let teacher and CE baseline reproduce 128/128 suffixes (nothing left to compare), 22 epochs
    # 32/128 (teacher) and 48/128 (student-sized CE model): a share that can differ by model.
    # Memorization rises steeply with epochs here (every example is seen equally often).
    train = ["--epochs", str(opts.epochs), "--lr", "3e-3", "--batch-size", "8", "--seed", str(opts.seed)]
    store = out / "teacher.zarr"
    evaluate = ["--prefix-len", str(opts.prefix_len), "--suffix-len", str(opts.suffix_len), "--dtype", "float32"]
    t: dict[str, float] = {}
    _stage("teacher (CE)", (out / "teacher" / DONE_FILE).exists(),
           ["distill", "--model", str(out / "init/teacher"), "--dataset", "demo", "--loss", "ce",
            "--out", str(out / "teacher"), *common, *train], t)
    _stage("precompute", _store_complete(store),
           ["precompute-logits", "--model", str(out / "teacher"), "--dataset", "demo", "--out", str(store),
            "--top-k", str(opts.top_k), "--dtype", "float32", *common], t)
    _stage("baseline (CE)", (out / "baseline" / DONE_FILE).exists(),
           ["distill", "--model", str(out / "init/student"), "--logits-store", str(store), "--loss", "ce",
            "--out", str(out / "baseline"), *train], t)
    _stage("student (KD)", (out / "student" / DONE_FILE).exists(),
           ["distill", "--model", str(out / "init/student"), "--logits-store", str(store), "--loss", "forward_kl",
            "--temperature", "2", "--out", str(out / "student"), *train], t)
    for name in ("teacher", "baseline", "student"):
        _stage(f"extract-eval {name}", (out / "eval" / name / SUMMARY_FILE).exists(),
               ["extract-eval", "--model", str(out / name), "--logits-store", str(store),
                "--out", str(out / "eval" / name), *evaluate], t)

    sets = {name: memorized_ids(out / "eval" / name) for name in ("teacher", "baseline", "student")}
    cmp = compare_sets(sets["teacher"][0], sets["baseline"][0], sets["student"][0], sets["teacher"][1])

    # the analysis: features of teacher and baseline, the classifier, then report/ (the plots)
    for name in ("teacher", "baseline"):
        _stage(f"features {name}", (out / "features" / name / SUMMARY_FILE).exists(),
               ["features", "--model", str(out / name), "--logits-store", str(store), "--out",
                str(out / "features" / name), "--prefix-len", str(opts.prefix_len), "--suffix-len",
                str(opts.suffix_len)], t)
    report = ["report", *(a for name in ("teacher", "baseline", "student")
                          for a in (f"--{name}-eval", str(out / "eval" / name))),
              "--teacher-features", str(out / "features" / "teacher"),
              "--baseline-features", str(out / "features" / "baseline"), "--out", str(out / "report")]
    student, examples = sets["student"]
    if min(len(student), examples - len(student)) >= 2:  # the classifier needs 2 of each class
        _stage("classify", (out / "classify" / CLASSIFICATION_FILE).exists(),
               ["classify", "--student-eval", str(out / "eval" / "student"), "--teacher-features",
                str(out / "features" / "teacher"), "--baseline-features", str(out / "features" / "baseline"),
                "--out", str(out / "classify"), "--seed", str(opts.seed)], t)
        report += ["--classify", str(out / "classify")]
    _stage("report", False, report, t)  # cheap; always rebuilt from what exists now
    cmp["stage_seconds"] = t
    table = format_table(cmp)
    (out / "comparison.json").write_text(json.dumps(cmp, indent=2))
    (out / "comparison.md").write_text(table + "\n")
    print(f"\nMemorization, {opts.prefix_len}-token prefix → {opts.suffix_len}-token suffix, greedy, exact match\n")
    print(table)
    print("\nstage seconds: " + ", ".join(f"{k} {v}" for k, v in t.items()))
    print(f"outputs in {out}/ (comparison.md, comparison.json; report/report.md and its plots)")
    return cmp
