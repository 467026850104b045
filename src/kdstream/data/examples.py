"""Pack tokenized documents into fixed-length examples with stable ids."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdstream.errors import KdError

_TOKENIZE_BATCH = 512  # documents per tokenizer call


@dataclass(frozen=True)
class Examples:
    input_ids: np.ndarray  # (S, L) int64 token ids
    example_id: np.ndarray  # (S,) int64: position in the full packing of the corpus (stable)
    doc_index: np.ndarray  # (S,) int64: document where the example starts

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def read(self, start: int, stop: int, keys: tuple[str, ...] = ("input_ids", "example_id")) -> dict[str, np.ndarray]:
        """Rows [start, stop) of the named fields (the same interface as a logit store)."""
        fields = {"input_ids": self.input_ids, "example_id": self.example_id, "doc_index": self.doc_index}
        missing = [k for k in keys if k not in fields]
        if missing:
            raise KeyError(f"plain examples have no {', '.join(missing)} (those come from a logit store)")
        return {k: fields[k][start:stop] for k in keys}


def pack_examples(texts: list[str], tokenizer, seq_len: int, max_examples: int | None = None) -> Examples:
    """Concatenate documents (each followed by EOS) and cut the stream into ``seq_len`` windows.

    Example i covers tokens [i*L, (i+1)*L) of the stream, so its id is stable under
    ``max_examples`` (a prefix of the packing) and independent of batch sizes. The trailing
    partial window is dropped. Tokenization stops once enough examples exist.
    """
    if seq_len < 2:
        raise KdError(f"--seq-len {seq_len} is too short: an example needs at least 2 tokens")
    eos = tokenizer.eos_token_id
    stream: list[np.ndarray] = []
    starts: list[int] = []  # stream offset where each document begins
    total = 0
    need = None if max_examples is None else max_examples * seq_len
    for b in range(0, len(texts), _TOKENIZE_BATCH):
        batch = texts[b : b + _TOKENIZE_BATCH]
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            doc = np.asarray(ids + ([eos] if eos is not None else []), dtype=np.int64)
            starts.append(total)
            stream.append(doc)
            total += len(doc)
        if need is not None and total >= need:
            break
    flat = np.concatenate(stream) if stream else np.zeros(0, np.int64)
    count = len(flat) // seq_len
    if max_examples is not None:
        count = min(count, max_examples)
    if count == 0:
        raise KdError(
            f"the corpus has {len(flat)} tokens, fewer than one example of --seq-len {seq_len}: "
            "use more data or a shorter --seq-len"
        )
    input_ids = flat[: count * seq_len].reshape(count, seq_len)
    offsets = np.arange(count, dtype=np.int64) * seq_len
    doc_index = np.searchsorted(np.asarray(starts), offsets, side="right") - 1
    return Examples(input_ids, np.arange(count, dtype=np.int64), doc_index.astype(np.int64))
