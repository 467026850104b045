"""What a kdstream logit store holds (format version 2), in one place.

Arrays, all with examples on axis 0 and the same number of rows per chunk:
    input_ids       (S, L)       uint16 | int32   the example's tokens
    example_id      (S,)         int64            stable id (position in the corpus packing)
    doc_index       (S,)         int64            source document of the example's first token
    topk_ids        (S, L-1, k)  uint16 | int32   row t: teacher's top-k ids predicting input_ids[t+1]
    topk_logprobs   (S, L-1, k)  uint16 | float32 their raw (T = 1) natural-log probabilities, descending,
                                                  encoded as the ``encoding`` attribute says (encoding.py)
    tail_mass       (S, L-1)     float32          1 - sum exp(top-k logprobs): the mass outside the top-k
    target_logprob  (S, L-1)     float32          teacher logprob of the true token input_ids[t+1]
    target_rank     (S, L-1)     uint16 | int32   its 1-based rank in the teacher's distribution
A sampled store (``targets: sampled``) holds sample_ids / sample_counts (S, L-1, k) and
sample_tail_count (S, L-1) instead of topk_ids, topk_logprobs and tail_mass (docs/store-format.md).
Group attributes describe provenance; ``complete`` is set True last, after every chunk is written.
Version 1 stores (fp32 logprobs, int32 ranks, no tail_mass) are still read.
"""
from __future__ import annotations

import numpy as np

FORMAT_NAME = "kdstream-logits"
FORMAT_VERSION = 2
TARGET_CHUNK_BYTES = 1 << 20  # a chunk is the unit of reading: >= 1 MiB raw keeps reads efficient

PER_EXAMPLE = ("input_ids", "example_id", "doc_index")
TEACHER_ARRAYS = ("topk_ids", "topk_logprobs", "tail_mass", "target_logprob", "target_rank")
ALL_ARRAYS = PER_EXAMPLE + TEACHER_ARRAYS
V1_ARRAYS = tuple(a for a in ALL_ARRAYS if a != "tail_mass")  # format version 1 had no tail_mass
# --targets sampled: unique drawn ids (most drawn first, padded with id 0 / count 0), their counts,
# and the draws that fell in the tail bucket (outside the teacher's top-k list).
SAMPLED_ARRAYS = PER_EXAMPLE + ("sample_ids", "sample_counts", "sample_tail_count", "target_logprob", "target_rank")


def stored_arrays(format_version: int = FORMAT_VERSION, targets: str = "topk") -> tuple[str, ...]:
    """Names of the arrays a store of this version and kind of targets holds."""
    if format_version < 2:
        return V1_ARRAYS
    return SAMPLED_ARRAYS if targets == "sampled" else ALL_ARRAYS


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest integer type that holds every token id of the vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def rank_dtype(vocab_size: int) -> np.dtype:
    """Ranks run 1..V: uint16 while V < 65536."""
    return np.dtype(np.uint16) if vocab_size < 1 << 16 else np.dtype(np.int32)


def array_specs(
    seq_len: int, k: int, vocab_size: int, encoding: str = "qdelta", format_version: int = FORMAT_VERSION
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-example shape (without the leading S axis) and on-disk dtype of every array."""
    ids = id_dtype(vocab_size)
    logprob = np.dtype(np.float32) if encoding == "fp32" or format_version < 2 else np.dtype(np.uint16)
    specs = {
        "input_ids": ((seq_len,), ids),
        "example_id": ((), np.dtype(np.int64)),
        "doc_index": ((), np.dtype(np.int64)),
        "topk_ids": ((seq_len - 1, k), ids),
        "topk_logprobs": ((seq_len - 1, k), logprob),
        "tail_mass": ((seq_len - 1,), np.dtype(np.float32)),
        "target_logprob": ((seq_len - 1,), np.dtype(np.float32)),
        "target_rank": ((seq_len - 1,), rank_dtype(vocab_size) if format_version >= 2 else np.dtype(np.int32)),
    }
    if format_version < 2:
        del specs["tail_mass"]
    if encoding == "sampled":  # k is the padded width: the most unique ids a position can have
        for name in ("topk_ids", "topk_logprobs", "tail_mass"):
            del specs[name]
        specs["sample_ids"] = ((seq_len - 1, k), ids)
        specs["sample_counts"] = ((seq_len - 1, k), np.dtype(np.uint8))
        specs["sample_tail_count"] = ((seq_len - 1,), np.dtype(np.uint8))
    return specs


def default_chunk_rows(seq_len: int, k: int, vocab_size: int, num_examples: int, encoding: str = "qdelta") -> int:
    """Examples per chunk: a power of two making the largest array's chunk >= 1 MiB."""
    specs = array_specs(seq_len, k, vocab_size, encoding)
    row_bytes = max(int(np.prod(shape, dtype=np.int64)) * dt.itemsize for shape, dt in specs.values())
    rows = 1
    while rows * row_bytes < TARGET_CHUNK_BYTES and rows < num_examples:
        rows *= 2
    return max(1, min(rows, num_examples))
