"""Session fixtures: a tiny BPE tokenizer, tiny GPT-NeoX models built from config (no hub), a
small corpus file, one teacher store written by the real `precompute-logits` CLI (vLLM), and a
read-only local HTTP server (``http_root``)."""
from __future__ import annotations

import functools
import json
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import SEQ_LEN, VOCAB, make_gpt_neox, one_line_error, precompute_args, run_cli, tree_digest

# vLLM on CPU: small KV cache; the engine runs in-process (see kdstream.engines.vllm).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def docs() -> list[str]:
    from kdstream.data.demo_corpus import demo_documents

    return demo_documents()[:120]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory, docs):
    from kdstream.text.tokenizers import train_bpe_tokenizer

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
    from benchmarks.fixtures import tiny_gpt_neox_config

    d = tmp_path_factory.mktemp("student_init")
    tiny_gpt_neox_config(VOCAB, hidden=128, layers=1, heads=2, intermediate=256, positions=2 * SEQ_LEN,
                         eos=tokenizer.eos_token_id).save_pretrained(str(d))
    tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture(scope="session")
def teacher_store(tmp_path_factory, teacher_dir, corpus_file) -> Path:
    """One real precompute (vLLM engine) shared by every test that reads a store."""
    out = tmp_path_factory.mktemp("stores") / "teacher.zarr"
    run_cli(*precompute_args(teacher_dir, corpus_file, out))
    return out


@pytest.fixture(scope="session")
def second_store(tmp_path_factory, teacher_dir, docs) -> Path:
    """A second store from the teacher of ``teacher_store`` over another corpus (its documents in
    reverse order), 8 examples in chunks of 3, written with --backend hf (no vLLM engine to start):
    with ``teacher_store``, the parts of a union (storage/union.py)."""
    d = tmp_path_factory.mktemp("second_store")
    corpus = d / "reversed.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in reversed(docs)))
    run_cli(*precompute_args(teacher_dir, corpus, d / "second.zarr", "--max-examples", 8, "--chunk-rows", 3,
                             "--backend", "hf"))
    return d / "second.zarr"


@pytest.fixture(scope="session")
def chat_teacher_dir(tmp_path_factory, docs) -> Path:
    """A tiny teacher whose tokenizer has ChatML's special tokens and template (as SmolLM2-Instruct)."""
    from chat_templates import CHATML, CHATML_SPECIALS, train_chat_tokenizer

    d = tmp_path_factory.mktemp("chat_teacher")
    tok = train_chat_tokenizer(docs, VOCAB, d, CHATML, CHATML_SPECIALS)
    return make_gpt_neox(d, tok, seed=3)


@pytest.fixture(scope="session")
def chat_file(tmp_path_factory, docs) -> Path:
    from chat_templates import conversations

    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in conversations(docs)))
    return path


@pytest.fixture(scope="session")
def chat_store(tmp_path_factory, chat_teacher_dir, chat_file) -> Path:
    """A conversation store (assistant targets) written by the real CLI with vLLM."""
    out = tmp_path_factory.mktemp("chat_store") / "chat.zarr"
    from chat_templates import chat_precompute_args

    run_cli(*chat_precompute_args(chat_teacher_dir, chat_file, out, "--logprob-encoding", "fp32"))
    return out


@pytest.fixture(scope="session")
def llama3_student(tmp_path_factory, docs):
    """A student of another tokenizer than the chat teacher's: config + a BPE of its own (another
    vocabulary) with Llama-3-style headers and template."""
    from benchmarks.fixtures import tiny_gpt_neox_config
    from chat_templates import LLAMA3, LLAMA3_SPECIALS, train_chat_tokenizer

    d = tmp_path_factory.mktemp("llama3_student")
    tok = train_chat_tokenizer(docs[:60], 600, d, LLAMA3, LLAMA3_SPECIALS)
    tiny_gpt_neox_config(len(tok), hidden=128, layers=1, heads=2, intermediate=256, positions=2 * SEQ_LEN,
                         eos=tok.eos_token_id).save_pretrained(str(d))
    return d, tok


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory, docs) -> Path:
    from chat_templates import short_prompts

    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in short_prompts(docs)))
    return path


@pytest.fixture(scope="session")
def gen_store(tmp_path_factory, chat_teacher_dir, prompt_file) -> tuple[Path, dict]:
    """A store of teacher-written responses (precompute-logits --generate, vLLM) and its summary."""
    from chat_templates import generate_args
    from helpers import last_json

    out = tmp_path_factory.mktemp("gen_store") / "gen.zarr"
    return out, last_json(run_cli(*generate_args(chat_teacher_dir, prompt_file, out)).stdout)


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


@pytest.fixture
def digest():
    """``digest(path)`` → {relative path: sha256}: compare before and after a failed command."""
    return tree_digest


@pytest.fixture
def error_line():
    """``error_line(proc)``: exit 2, one ``error: …`` line, no traceback; returns the line."""
    return one_line_error
