"""Session fixtures: a tiny BPE tokenizer, tiny GPT-NeoX models built from config (no hub), a
small corpus file, one teacher store written by the real `precompute-logits` CLI (vLLM), and a
read-only local HTTP server (``http_root``)."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

VOCAB = 512
SEQ_LEN = 64
TOP_K = 8
NUM_EXAMPLES = 24

# vLLM on CPU: small KV cache; the engine runs in-process (see kdstream.vllm_engine).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def run_cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m kdstream ARGS` the way a user runs the command; returns the finished process."""
    proc = subprocess.run(
        [sys.executable, "-m", "kdstream", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "TQDM_DISABLE": "1"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kdstream {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def make_gpt_neox(directory: Path, tokenizer, *, layers=2, hidden=128, heads=2, seed=0, vocab=VOCAB) -> Path:
    """A random GPT-NeoX (Pythia architecture) with head_dim 64 (vLLM's CPU backend rejects 16)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=2 * SEQ_LEN, rotary_pct=0.25,
        tie_word_embeddings=False, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config)
    with torch.no_grad():  # a peakier output layer than the default init: more realistic top-k
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def docs() -> list[str]:
    from kdstream.data.demo_corpus import demo_documents

    return demo_documents()[:120]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory, docs):
    from kdstream.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(docs, VOCAB, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, docs) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, tokenizer) -> Path:
    return make_gpt_neox(tmp_path_factory.mktemp("teacher"), tokenizer, seed=1)


@pytest.fixture(scope="session")
def student_init_dir(tmp_path_factory, tokenizer) -> Path:
    """Config + tokenizer only: distill initializes the weights from the seed."""
    from transformers import GPTNeoXConfig

    d = tmp_path_factory.mktemp("student_init")
    GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256,
        max_position_embeddings=2 * SEQ_LEN, rotary_pct=0.25, tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    ).save_pretrained(str(d))
    tokenizer.save_pretrained(str(d))
    return d


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


@pytest.fixture(scope="session")
def teacher_store(tmp_path_factory, teacher_dir, corpus_file) -> Path:
    """One real precompute (vLLM engine) shared by every test that reads a store."""
    out = tmp_path_factory.mktemp("stores") / "teacher.zarr"
    run_cli(*precompute_args(teacher_dir, corpus_file, out))
    return out


@pytest.fixture
def http_root(tmp_path, request):
    """Serve tmp_path/www read-only over HTTP on a free loopback port; yields (directory, base URL).
    Parametrize indirectly with False to refuse directory listings, like most static hosting."""
    listings = getattr(request, "param", True)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # no request log lines
            pass

        def list_directory(self, path):
            if listings:
                return super().list_directory(path)
            self.send_error(404, "no directory listings")
            return None

    class Server(ThreadingHTTPServer):
        # the stdlib's listen backlog is 5: the reader's concurrent requests (up to zarr's
        # async.concurrency, 10) would overflow it, and a dropped connection retries after a 1 s
        # SYN timeout. Real servers queue hundreds (nginx: 511).
        request_queue_size = 128

    root = tmp_path / "www"
    root.mkdir()
    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    server.timeout = 10
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
