"""What a kdstream logit store holds (format version 1), in one place.

Arrays, all with examples on axis 0 and the same number of rows per chunk:
    input_ids       (S, L)       uint16 | int32   the example's tokens
    example_id      (S,)         int64            stable id (position in the corpus packing)
    doc_index       (S,)         int64            source document of the example's first token
    topk_ids        (S, L-1, k)  uint16 | int32   row t: teacher's top-k ids predicting input_ids[t+1]
    topk_logprobs   (S, L-1, k)  float32          their raw (T = 1) natural-log probabilities, descending
    target_logprob  (S, L-1)     float32          teacher logprob of the true token input_ids[t+1]
    target_rank     (S, L-1)     int32            its 1-based rank in the teacher's distribution
Group attributes describe provenance; ``complete`` is set True last, after every chunk is written.
"""
from __future__ import annotations

import numpy as np

FORMAT_NAME = "kdstream-logits"
FORMAT_VERSION = 1
TARGET_CHUNK_BYTES = 1 << 20  # a chunk is the unit of reading: >= 1 MiB raw keeps reads efficient

PER_EXAMPLE = ("input_ids", "example_id", "doc_index")
TEACHER_ARRAYS = ("topk_ids", "topk_logprobs", "target_logprob", "target_rank")
ALL_ARRAYS = PER_EXAMPLE + TEACHER_ARRAYS


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest integer type that holds every token id of the vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def array_specs(seq_len: int, k: int, vocab_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-example shape (without the leading S axis) and dtype of every array."""
    ids = id_dtype(vocab_size)
    return {
        "input_ids": ((seq_len,), ids),
        "example_id": ((), np.dtype(np.int64)),
        "doc_index": ((), np.dtype(np.int64)),
        "topk_ids": ((seq_len - 1, k), ids),
        "topk_logprobs": ((seq_len - 1, k), np.dtype(np.float32)),
        "target_logprob": ((seq_len - 1,), np.dtype(np.float32)),
        "target_rank": ((seq_len - 1,), np.dtype(np.int32)),
    }


def default_chunk_rows(seq_len: int, k: int, vocab_size: int, num_examples: int) -> int:
    """Examples per chunk: a power of two making the largest array's chunk >= 1 MiB."""
    specs = array_specs(seq_len, k, vocab_size)
    row_bytes = max(int(np.prod(shape, dtype=np.int64)) * dt.itemsize for shape, dt in specs.values())
    rows = 1
    while rows * row_bytes < TARGET_CHUNK_BYTES and rows < num_examples:
        rows *= 2
    return max(1, min(rows, num_examples))
