"""What the fork server (kdstream/forkserver.py) saves per CLI run: the same commands run
through ``helpers.run_cli`` as forks of the server and as fresh interpreters
(``KDSTREAM_FORKSERVER=0``), each timed. The commands are the suite's kinds: `--help`, an
error caught before any work, a small precompute (HF backend, and vLLM's engine) and a one-epoch
distill from its store, on the tests' tiny GPT-NeoX and BPE tokenizer.

    python -m benchmarks.cli_forkserver_bench [--repeats 2]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.results import ROOT, save
from kdstream import forkserver


def _load_helpers():
    """The tests' helpers module (run_cli, make_gpt_neox, precompute_args), loaded from its file."""
    spec = importlib.util.spec_from_file_location("helpers", ROOT / "tests" / "helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _load_helpers()


def _inputs(work: Path) -> tuple[Path, Path, Path]:
    """The tests' tiny teacher and student (GPT-NeoX, BPE of 512) and a 120-document corpus."""
    from kdstream.data.demo_corpus import demo_documents
    from kdstream.text.tokenizers import train_bpe_tokenizer

    docs = demo_documents()[:120]
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = train_bpe_tokenizer(docs, helpers.VOCAB, work / "tokenizer")
    return (helpers.make_gpt_neox(work / "teacher", tokenizer, seed=1),
            helpers.make_gpt_neox(work / "student", tokenizer, layers=1, seed=2), corpus)


def _run(teacher: Path, student: Path, corpus: Path, out: Path) -> dict[str, float]:
    """Seconds of each command, in order (the distill reads the precompute's store)."""
    out.mkdir(parents=True)
    store = out / "store.zarr"
    commands = {
        "help": (["--help"], 0),
        "error_before_work": (["distill", "--logits-store", out / "missing.zarr", "--model", student,
                               "--out", out / "never"], 2),
        "precompute_hf": (helpers.precompute_args(teacher, corpus, store, "--backend", "hf"), 0),
        # vLLM: preloaded by the server where torch is a CPU build (forkserver._preload_vllm)
        "precompute_vllm": (helpers.precompute_args(teacher, corpus, out / "store_vllm.zarr", "--backend", "vllm"), 0),
        "distill_one_epoch": (["distill", "--logits-store", store, "--model", student, "--epochs", 1,
                               "--batch-size", 8, "--out", out / "student"], 0),
    }
    seconds = {}
    for name, (args, code) in commands.items():
        start = time.perf_counter()
        proc = helpers.run_cli(*args, check=False)
        seconds[name] = round(time.perf_counter() - start, 2)
        if proc.returncode != code:
            raise SystemExit(f"{name}: exit {proc.returncode}, expected {code}: {proc.stderr[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher, student, corpus = _inputs(work)
        start = time.perf_counter()
        forkserver.shared({**os.environ, "TQDM_DISABLE": "1"})  # its one-time start, timed on its own
        server_start_s = round(time.perf_counter() - start, 2)
        runs: dict[str, list[dict[str, float]]] = {"fork_server": [], "fresh_interpreter": []}
        for attempt in range(args.repeats):  # the two modes alternate: the machine's drift hits both
            for mode, flag in (("fork_server", "1"), ("fresh_interpreter", "0")):
                os.environ["KDSTREAM_FORKSERVER"] = flag
                runs[mode].append(_run(teacher, student, corpus, work / f"{mode}-{attempt}"))
    best = {mode: {name: min(r[name] for r in rs) for name in rs[0]} for mode, rs in runs.items()}
    figures = {
        "server_start_s": server_start_s, "repeats": args.repeats,
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "best_s": best,
        "saved_per_run_s": {name: round(best["fresh_interpreter"][name] - best["fork_server"][name], 2)
                            for name in best["fork_server"]},
        "runs": runs,
    }
    save("cli_forkserver_bench", figures)


if __name__ == "__main__":
    main()
