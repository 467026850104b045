"""A logit store as a map-style torch Dataset, for any training loop (plain PyTorch, HF Trainer,
TRL, accelerate): ``ds[i]`` is example i's tensors, ``collate`` stacks a list of them.

Why map-style: every sampler works (RandomSampler, DistributedSampler, the HF Trainer's own with
its resume), and an example is addressed by its row, so a restarted run that replays its sampler
gets the same teacher rows for the same steps — the logits cannot drift from the data.

Handles: the store is opened once here (to check it and learn its length and identity) and then
again, lazily, in each process that reads (a DataLoader worker, a torchrun rank), pinned to the
identity seen at construction: a store rewritten meanwhile is refused, not mixed in.

Reads: a store's unit of reading is a chunk of R rows (every row of an array chunk is decoded
together), so reading rows one at a time would decode each chunk up to R times per epoch.
``__getitems__`` (which torch's DataLoader calls with a whole batch of indices) reads through
distill's ``BlockReader``: whole chunks, one slice each, the last ``cache_blocks`` kept per process,
so a sampler that visits rows chunk by chunk (``block_order``) decodes each chunk once.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from kdstream.errors import KdError

# What a KD step needs; ``example_id`` lets a loop log or exclude examples by their stable id.
DEFAULT_KEYS = ("input_ids", "topk_ids", "topk_logprobs", "example_id")
# Padding of ragged rows in ``collate``: an id the loss ignores (its logprob is -inf, probability 0).
_PAD = {"topk_logprobs": float("-inf"), "tail_mass": 0.0}


def _url_list(store: str | Path | Sequence[str | Path]) -> list[str]:
    from kdstream.storage.union import split_urls

    return split_urls(str(store)) if isinstance(store, (str, Path)) else [str(u) for u in store]


class StoreDataset(torch.utils.data.Dataset):
    """Examples of one store, or of several from one teacher and tokenizer read as one.

    ``store``: a path or fsspec URL, a comma-separated list of them, or a list. ``keys``: the
    decoded arrays to return (``kdstream.storage.reader.KEYS``; default DEFAULT_KEYS).
    ``rows``: the store rows this dataset serves, in this order (default all); ``exclude``: stable
    example ids (or a file of them, one per line) to leave out, as ``distill --exclude`` does.
    ``ds[i]`` → {key: tensor}: input_ids (L,) int64, topk_ids (L-1, k) int64, topk_logprobs
    (L-1, k) float32 (natural log, T = 1), example_id () int64; row t of the teacher arrays
    predicts input_ids[t+1].
    """

    def __init__(self, store: str | Path | Sequence[str | Path], keys: Sequence[str] = DEFAULT_KEYS, *,
                 rows: Sequence[int] | np.ndarray | None = None,
                 exclude: Iterable[int] | str | Path | None = None, cache_blocks: int = 2) -> None:
        from kdstream.storage.reader import KEYS

        unknown = [k for k in keys if k not in (*KEYS, "topk_len", "length")]
        if unknown:
            raise KdError(f"StoreDataset keys {unknown} are not store arrays: choose from {', '.join(KEYS)}")
        self.urls = _url_list(store)
        if not self.urls:
            raise KdError("StoreDataset needs a store: pass its path or URL")
        self.cache_blocks = cache_blocks
        handle = self._open(None)
        # a conversation store: each row's topk_len too (0: no target), which KDLoss reads as the mask
        self.keys = tuple(dict.fromkeys((*keys, "topk_len"))) if handle.conversations else tuple(keys)
        self.identity: str | None = handle.identity
        self.attrs = dict(handle.attrs)
        self.seq_len, self.k, self.vocab_size = handle.seq_len, handle.k, handle.vocab_size
        self.sampled = bool(handle.sampled)
        self.block_rows = int(handle.chunk_rows)
        n = len(handle)
        chosen = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if chosen.ndim != 1 or (chosen.size and (chosen.min() < -n or chosen.max() >= n)):
            raise KdError(f"StoreDataset rows must be row indices of the store, 0..{n - 1}")
        chosen = chosen % max(n, 1)
        drop = _exclude_ids(exclude)
        if drop:
            ids = handle.read(0, n, ("example_id",))["example_id"]  # (S,) int64
            chosen = chosen[~np.isin(ids[chosen], list(drop))]
        self.rows = chosen
        self._handle, self._pid, self._reader = handle, os.getpid(), None

    def _open(self, identity: str | None):
        from kdstream.storage import open_stores
        from kdstream.storage.memory import keep_freed_memory

        keep_freed_memory()  # the reading process (a DataLoader worker, or the trainer's): storage/memory.py
        return open_stores(self.urls, identity=identity)

    @property
    def url(self) -> str:
        from kdstream.storage.union import join_urls

        return join_urls(self.urls)

    @property
    def store(self):
        """This process's handle (reopened after a fork or unpickling, pinned to ``identity``)."""
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid, self._reader = self._open(self.identity), os.getpid(), None
        return self._handle

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_handle=None, _pid=None, _reader=None)  # each process opens its own
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Several examples at once (torch's DataLoader calls this with a batch of indices)."""
        from kdstream.distill.loader import BlockReader

        store = self.store  # (re)opened first: a fork drops the reader and its cached chunks
        if self._reader is None:  # whole chunks per read, the last ``cache_blocks`` kept (as distill reads)
            self._reader = BlockReader(store, self.block_rows, self.keys, cache=max(1, self.cache_blocks))
        for i in indices:
            if not -len(self) <= int(i) < len(self):
                raise IndexError(f"example {i} out of range for a dataset of {len(self)}")
        data = self._reader.take(self.rows[np.asarray(indices, dtype=np.int64)])  # {key: (n, ...)}
        return [{k: torch.from_numpy(np.asarray(data[k][j])) for k in self.keys} for j in range(len(indices))]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]

    def block_order(self, seed: int, epoch: int = 0) -> list[int]:
        """Dataset indices in a shuffled order that visits the store chunk by chunk (chunks
        shuffled, then the rows within each), deterministic in (seed, epoch): each chunk is then
        decoded once per epoch instead of up to R times. A list is a valid sampler:
        ``DataLoader(ds, sampler=ds.block_order(seed, epoch), batch_size=B, collate_fn=collate)``."""
        rng = np.random.default_rng([seed, epoch])
        blocks = self.rows // self.block_rows  # (n,) chunk of each dataset index
        order = []
        for b in rng.permutation(np.unique(blocks)):
            members = np.flatnonzero(blocks == b)
            order.append(members[rng.permutation(len(members))])
        return np.concatenate(order).tolist() if order else []


def _exclude_ids(exclude: Iterable[int] | str | Path | None) -> frozenset[int]:
    if exclude is None:
        return frozenset()
    if isinstance(exclude, (str, Path)):
        from kdstream.distill.sources import read_exclude

        return read_exclude(str(exclude))
    return frozenset(int(x) for x in exclude)


def collate(examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """[{key: tensor}] → {key: (B, ...) tensor}. Rows of different shapes (a ragged store's
    lists of different lengths) are padded at the end of each axis: logprobs with -inf and ids
    with 0, which every loss reads as "not listed" (probability 0)."""
    if not examples:
        raise ValueError("collate got an empty batch")
    out = {}
    for key in examples[0]:
        parts = [e[key] for e in examples]
        shape = tuple(max(p.shape[d] for p in parts) for d in range(parts[0].dim()))
        if all(tuple(p.shape) == shape for p in parts):
            out[key] = torch.stack(parts)
            continue
        if key == "input_ids":
            raise ValueError(f"examples of different lengths ({sorted({p.shape[0] for p in parts})}): "
                             "a store's examples all have its seq_len; do not mix stores of different seq_len")
        batch = parts[0].new_full((len(parts), *shape), _PAD.get(key, 0))
        for j, p in enumerate(parts):
            batch[(j, *(slice(0, s) for s in p.shape))] = p
        out[key] = batch
    return out
