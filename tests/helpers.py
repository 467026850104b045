"""Helpers the tests share (imported as ``from helpers import …``; pytest puts tests/ on the path
through tests/conftest.py): the tiny models' sizes, running the CLI as a user does, building a tiny
GPT-NeoX, reading a run's losses and weights, and the fault suite's digest and one-line-error checks."""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from kdstream import forkserver

VOCAB = 512
SEQ_LEN = 64
TOP_K = 8
NUM_EXAMPLES = 24

def run_cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m kdstream ARGS` the way a user runs the command; returns the finished process.

    The process is a fork of the session's fork server (kdstream/forkserver.py: the imports done
    once); ``KDSTREAM_FORKSERVER=0`` runs a fresh interpreter each time instead.
    """
    argv = [sys.executable, "-m", "kdstream", *map(str, args)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # one run at a time through the server; a run from another thread meanwhile gets an interpreter
    if forkserver.enabled() and _SERVER_LOCK.acquire(blocking=False):
        try:
            proc = _forked(argv, env, timeout)
        finally:
            _SERVER_LOCK.release()
    else:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"kdstream {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


_SERVER_LOCK = threading.Lock()  # held by the run using the session's fork server
_FILES: list[str] = []  # the directory of the forks' stdout and stderr files


def _forked(argv: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``argv`` run as a fork of the session's server (its own process group, killed at the timeout),
    its output read back from files."""
    if not _FILES:
        _FILES.append(tempfile.mkdtemp(prefix="kdstream-cli-"))
        atexit.register(shutil.rmtree, _FILES[0], ignore_errors=True)
    out, err = os.path.join(_FILES[0], "stdout"), os.path.join(_FILES[0], "stderr")
    code = forkserver.shared(env).run(argv[3:], env=env, cwd=os.getcwd(), stdout=out, stderr=err, timeout=timeout,
                                      own_group=True)
    with open(out, encoding="utf-8", errors="replace") as f_out, open(err, encoding="utf-8", errors="replace") as f_err:
        return subprocess.CompletedProcess(argv, code, f_out.read(), f_err.read())


def levenshtein(a, b) -> int:
    """Plain dynamic-programming edit distance between two sequences: the reference the vectorised
    ``extract.metrics.edit_distance`` is checked against."""
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def make_gpt_neox(directory: Path, tokenizer, *, layers=2, hidden=128, heads=2, seed=0, vocab=VOCAB) -> Path:
    """A random GPT-NeoX (Pythia architecture) with head_dim 64 (vLLM's CPU backend rejects 16)."""
    import torch

    from benchmarks.fixtures import tiny_gpt_neox

    model = tiny_gpt_neox(vocab, seed=seed, hidden=hidden, layers=layers, heads=heads, positions=2 * SEQ_LEN,
                          eos=tokenizer.eos_token_id)
    with torch.no_grad():  # a peakier output layer than the default init: more realistic top-k
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def losses(out: Path) -> list[float]:
    """The per-step training losses a distill run logged in OUT/metrics.jsonl."""
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def weight_gap(a: Path, b: Path) -> float:
    """Largest |difference| between two saved models' weights (inf when their tensors differ in name)."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if wa.keys() != wb.keys():
        return float("inf")
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def precompute_args(teacher_dir: Path, corpus_file: Path, out: Path, *extra: str) -> list[str]:
    return [
        "precompute-logits", "--model", teacher_dir, "--dataset", corpus_file, "--out", out,
        "--top-k", TOP_K, "--seq-len", SEQ_LEN, "--max-examples", NUM_EXAMPLES, "--dtype", "float32",
        "--batch-size", 10, *extra,
    ]


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (a file: itself); {} when absent."""
    root = Path(root)
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(proc) -> str:
    """The command failed with exit 2 and printed exactly one ``error: …`` line and no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def store_eval_shards(store: Path, directory: Path, workers: int, *args) -> list[Path]:
    """``extract-eval --logits-store STORE ARGS`` split over ``workers`` shards (no model needed
    with ``--method store``), each into ``directory/w{i}``: the inputs of ``kdstream eval merge``."""
    for i in range(workers):
        run_cli("extract-eval", "--logits-store", store, *args, "--num-workers", workers, "--worker-index", i,
                "--out", directory / f"w{i}")
    return [directory / f"w{i}" for i in range(workers)]


def without_tokenizer(store: Path, out: Path) -> Path:
    """A copy of ``store`` at ``out`` as a kdstream that stored no tokenizer wrote it: no
    ``tokenizer/`` group, no ``tokenizer.files`` attribute, the attributes' checksum resealed."""
    import shutil

    from kdstream.storage.integrity import INTEGRITY, attrs_sha256

    shutil.copytree(store, out)
    shutil.rmtree(out / "tokenizer")
    meta = json.loads((out / "zarr.json").read_text())
    attrs = meta["attributes"]
    attrs["tokenizer"].pop("files")
    attrs[INTEGRITY]["attrs_sha256"] = attrs_sha256(attrs)
    (out / "zarr.json").write_text(json.dumps(meta, indent=2))
    return out


def as_version_3(path):
    """Make a store written now into a format version 3 store: no integrity record (attribute,
    manifest array, manifest.arrays/layout), as the writer before version 4 left it."""
    import shutil

    meta = json.loads((path / "zarr.json").read_text())
    attrs = meta["attributes"]
    attrs["format_version"] = 3
    attrs.pop("integrity")
    for key in ("arrays", "layout"):
        attrs["manifest"].pop(key)
    (path / "zarr.json").write_text(json.dumps(meta))
    shutil.rmtree(path / "manifest_crc32c")
