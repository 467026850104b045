"""What a kdstream logit store holds (format versions 4, 6 and 7; 1 to 7 read), in one place.

Per-example arrays, all with examples on axis 0 and the same number of rows per chunk (R):
    input_ids       (S, L)       uint16 | int32   the example's tokens
    example_id      (S,)         int64            stable id (position in the corpus packing)
    doc_index       (S,)         int64            source document of the example's first token
    topk_index      (S, L-1, k)  uint16 | int32   row t: the teacher's top-k ids predicting input_ids[t+1],
                                                  most likely first, each as its index in its chunk's id_table
    topk_logprobs   (S, L-1, k)  uint16 | float32 their raw (T = 1) natural-log probabilities, descending,
                                                  as the ``encoding`` attribute says (encoding.py)
    topk_shift      (S, L-1)     int16            qdelta: the row's renormalisation shift (encoding.py)
    tail_mass       (S, L-1)     float32          fp32: 1 - sum exp(top-k logprobs), the mass outside the top-k
    target_code     (S, L-1)     int32            qdelta: the teacher logprob of the true token input_ids[t+1],
                                                  as a residual against the top-k codes (encoding.py)
    target_logprob  (S, L-1)     float32          fp32: that logprob, exact
    target_rank     (S, L-1)     uint16 | int32   its 1-based rank in the teacher's distribution
    topk_len        (S, L-1)     uint8 | uint16   ragged stores only (versions 6 and 7): entries of row t in use,
                                                  1..k; slots >= topk_len are padding (docs/store-format.md)
One array with one row per chunk (C = ceil(S / R) rows, chunks of one row):
    id_table        (C, V)       uint16 | int32   chunk c's distinct top-k ids, most frequent in the chunk
                                                  first (ties by id), then zeros: topk_ids = id_table[c][topk_index]
A sampled store (``targets: sampled``) holds sample_ids / sample_counts (S, L-1, k) and
sample_tail_count (S, L-1) instead of the top-k arrays, tail and target code (docs/store-format.md).
Group attributes describe provenance; ``complete`` is set True last, after every chunk is written.
A ``tokenizer/`` group holds the teacher's tokenizer files, listed with their sha256 in the
``tokenizer`` attribute (tokenizer_files.py); no format version of its own: stores without it
still read, and readers that do not know it ignore it.
A fixed top-k text store is written as version 4: the arrays above plus an integrity record written
at finalize (integrity.py), which readers check. A ragged store (``precompute-logits --top-p`` /
``--budget``, attribute ``selection``) is version 6: ``topk_len`` added, and each chunk of
topk_index / topk_logprobs holding the chunk's kept entries back to back, then zeros (packing.py).
A conversation store (attribute ``conversations``) is version 7: version 6's layout, one example
per conversation, input_ids padded with zeros after ``length`` (S,) int32 tokens, and teacher rows
only at the target positions (those whose next token the loss is on, text/chat.py): ``topk_len``
is 0 elsewhere, so the packed chunks hold no entry for them and their per-row codes are 0; a fixed
top-k conversation store has ``topk_len`` k at every target. A store of teacher-written responses
(``precompute-logits --generate``, attribute ``generation``) is a version 7 conversation store with
two more per-example arrays: ``prompt_id`` (S,) int64, shared by a prompt's samples, and
``finish_reason`` (S,) uint8, an index into ``FINISH_REASONS``. Older versions (1, 2, 3 and 5) are
still read: docs/store-format.md, "Format versions".
"""
from __future__ import annotations

from typing import Any

import numpy as np

FORMAT_NAME = "kdstream-logits"
FORMAT_VERSION = 7  # the newest this kdstream reads
FIXED_VERSION = 4  # fixed top-k text stores: kept at 4 so readers without ragged rows read them
PADDED_RAGGED_VERSION = 5  # ragged rows padded to k: read, not written
RAGGED_VERSION = 6  # ragged stores: each chunk's kept entries packed back to back (packing.py)
CONVERSATION_VERSION = 7  # conversation stores: ``length``, rows only at the target positions
EXAMPLE_LENGTH = "length"  # a conversation store's real tokens per example
GENERATION_ARRAYS = ("prompt_id", "finish_reason")  # a generated store's, per example
FINISH_REASONS = ("stop", "length")  # finish_reason codes: a stop token was sampled | max new tokens reached
LENGTH_ARRAY = "topk_len"
RAGGED_KINDS = ("top_p", "budget")  # the ``selection`` kinds whose rows have their own length
TARGET_CHUNK_BYTES = 1 << 20  # a chunk is the unit of reading: >= 1 MiB raw keeps reads efficient

PER_EXAMPLE = ("input_ids", "example_id", "doc_index")
PER_CHUNK = ("id_table",)  # one row per chunk of the per-example arrays
V3_QDELTA = PER_EXAMPLE + ("topk_index", "id_table", "topk_logprobs", "topk_shift", "target_code", "target_rank")
V3_FP32 = PER_EXAMPLE + ("topk_index", "id_table", "topk_logprobs", "tail_mass", "target_logprob", "target_rank")
V2_ARRAYS = PER_EXAMPLE + ("topk_ids", "topk_logprobs", "tail_mass", "target_logprob", "target_rank")
V1_ARRAYS = tuple(a for a in V2_ARRAYS if a != "tail_mass")  # format version 1 had no tail_mass
# --targets sampled: unique drawn ids (most drawn first, padded with id 0 / count 0), their counts,
# and the draws that fell in the tail bucket (outside the teacher's top-k list). Same in versions 2 and 3.
SAMPLED_ARRAYS = PER_EXAMPLE + ("sample_ids", "sample_counts", "sample_tail_count", "target_logprob", "target_rank")


def stored_arrays(format_version: int = FIXED_VERSION, targets: str | None = "topk",
                  logprobs: str = "qdelta", ragged: bool = False, conversations: bool = False,
                  generated: bool = False) -> tuple[str, ...]:
    """Names of the arrays a store of this version, kind of targets and logprob encoding holds
    (``ragged``: rows of their own length, ``topk_len``; version >= 5 top-k stores only;
    ``conversations``: version 7, one example per conversation with its ``length``; ``generated``:
    a conversation store of teacher-written responses, with GENERATION_ARRAYS)."""
    if conversations and format_version >= CONVERSATION_VERSION:
        return (stored_arrays(RAGGED_VERSION, targets, logprobs, True) + (EXAMPLE_LENGTH,)
                + (GENERATION_ARRAYS if generated else ()))
    if format_version < 2:
        return V1_ARRAYS
    if targets == "sampled" or logprobs == "sampled":
        return SAMPLED_ARRAYS
    if format_version == 2:
        return V2_ARRAYS
    fixed = V3_FP32 if logprobs == "fp32" else V3_QDELTA
    return fixed + (LENGTH_ARRAY,) if ragged and format_version >= PADDED_RAGGED_VERSION else fixed


def is_ragged(attrs: dict[str, Any]) -> bool:
    """Whether the store whose group attributes are ``attrs`` has rows of their own length."""
    selection = attrs.get("selection")
    return (isinstance(selection, dict) and selection.get("kind") in RAGGED_KINDS) or is_conversations(attrs)


def is_conversations(attrs: dict[str, Any]) -> bool:
    """Whether the store holds one example per conversation, rows at its target positions (version 7)."""
    return isinstance(attrs.get("conversations"), dict) and int(attrs.get("format_version", 1)) >= CONVERSATION_VERSION


def is_generated(attrs: dict[str, Any]) -> bool:
    """Whether the store holds teacher-written responses (``precompute-logits --generate``)."""
    return is_conversations(attrs) and isinstance(attrs.get("generation"), dict)


def is_packed(attrs: dict[str, Any]) -> bool:
    """Whether a ragged store's chunks hold their kept entries back to back (version 6, packing.py)
    rather than rows padded to k (version 5)."""
    return is_ragged(attrs) and int(attrs.get("format_version", 1)) >= RAGGED_VERSION


def token_counts(attrs: dict[str, Any]) -> tuple[int, int]:
    """(tokens, target positions) of the store whose attributes are ``attrs``: a conversation
    store's own counts (its padding excluded), else every token and position of its windows."""
    chat = attrs.get("conversations")
    if isinstance(chat, dict) and chat.get("tokens") is not None:  # a generated store's: set at finalize
        return int(chat["tokens"]), int(chat["target_positions"])
    n, seq_len = int(attrs["num_examples"]), int(attrs["seq_len"])
    return n * seq_len, n * (seq_len - 1)


def arrays_of(attrs: dict[str, Any]) -> tuple[str, ...]:
    """``stored_arrays`` of the store whose group attributes are ``attrs``."""
    logprobs = (attrs.get("encoding") or {}).get("topk_logprobs", "fp32")
    return stored_arrays(int(attrs.get("format_version", 1)), attrs.get("targets"), logprobs, is_ragged(attrs),
                         is_conversations(attrs), is_generated(attrs))


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest integer type that holds every token id of the vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def rank_dtype(vocab_size: int) -> np.dtype:
    """Ranks run 1..V: uint16 while V < 65536."""
    return np.dtype(np.uint16) if vocab_size < 1 << 16 else np.dtype(np.int32)


def length_dtype(k: int) -> np.dtype:
    """``topk_len`` holds 1..k: uint8 while k < 256."""
    return np.dtype(np.uint8) if k <= np.iinfo(np.uint8).max else np.dtype(np.uint16)


def array_specs(
    seq_len: int, k: int, vocab_size: int, encoding: str = "qdelta", format_version: int = FIXED_VERSION,
    ragged: bool = False, conversations: bool = False, generated: bool = False,
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape of one row (without the leading axis: S examples, or C chunks for PER_CHUNK arrays)
    and on-disk dtype of every array of a store."""
    ids = id_dtype(vocab_size)
    fp32 = np.dtype(np.float32)
    logprob = fp32 if encoding == "fp32" or format_version < 2 else np.dtype(np.uint16)
    specs = {
        "input_ids": ((seq_len,), ids),
        "example_id": ((), np.dtype(np.int64)),
        "doc_index": ((), np.dtype(np.int64)),
        "topk_ids": ((seq_len - 1, k), ids),
        "topk_index": ((seq_len - 1, k), ids),  # < the number of distinct ids of a chunk <= V
        "id_table": ((vocab_size,), ids),
        "topk_logprobs": ((seq_len - 1, k), logprob),
        "topk_shift": ((seq_len - 1,), np.dtype(np.int16)),
        "tail_mass": ((seq_len - 1,), fp32),
        "target_code": ((seq_len - 1,), np.dtype(np.int32)),
        "target_logprob": ((seq_len - 1,), fp32),
        "target_rank": ((seq_len - 1,), rank_dtype(vocab_size) if format_version >= 2 else np.dtype(np.int32)),
        "sample_ids": ((seq_len - 1, k), ids),  # sampled: k is the padded width, the most unique ids a row can have
        "sample_counts": ((seq_len - 1, k), np.dtype(np.uint8)),
        "sample_tail_count": ((seq_len - 1,), np.dtype(np.uint8)),
        LENGTH_ARRAY: ((seq_len - 1,), length_dtype(k)),
        EXAMPLE_LENGTH: ((), np.dtype(np.int32)),
        "prompt_id": ((), np.dtype(np.int64)),
        "finish_reason": ((), np.dtype(np.uint8)),
    }
    names = stored_arrays(format_version, "sampled" if encoding == "sampled" else "topk", encoding, ragged,
                          conversations, generated)
    return {name: specs[name] for name in names}


def default_chunk_rows(seq_len: int, k: int, vocab_size: int, num_examples: int, encoding: str = "qdelta") -> int:
    """Examples per chunk: a power of two making the largest per-example array's chunk >= 1 MiB."""
    specs = array_specs(seq_len, k, vocab_size, encoding)
    row_bytes = max(int(np.prod(shape, dtype=np.int64)) * dt.itemsize
                    for name, (shape, dt) in specs.items() if name not in PER_CHUNK)
    rows = 1
    while rows * row_bytes < TARGET_CHUNK_BYTES and rows < num_examples:
        rows *= 2
    return max(1, min(rows, num_examples))
