"""Stream training batches from a logit store (or in-memory examples) in a seeded, exact order.

The plan: an epoch's order depends only on (number of examples, block size, seed, epoch) —
never on the source, the number of ranks or of DataLoader workers — so a CE baseline trained
from a dataset and a student trained from the store of the same examples see the same order,
and N ranks see what one process sees. Contiguous blocks of ``block_rows`` rows are shuffled,
then rows within each block; excluded examples are dropped; global batch g is rows
``order[g*B:(g+1)*B]``.

The reads: global batch g goes to DataLoader worker ``g % workers``; each rank takes its slice
of the batch (``distributed.local_slice``). A worker reads a whole block with one slice (whole
chunks, no per-row reads) and keeps the last two blocks, so in one process every block is read
once per epoch. Resuming mid-epoch starts at batch g: nothing before it is read.
"""
from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kdstream.errors import KdError


class ExampleSource(Protocol):
    def __len__(self) -> int: ...

    def read(self, start: int, stop: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]: ...


def epoch_order(num_examples: int, block_rows: int, seed: int, epoch: int, kept: np.ndarray | None = None) -> np.ndarray:
    """Row indices in the order an epoch visits them; ``kept`` (bool per row) drops the others."""
    rng = np.random.default_rng([seed, epoch])
    starts = np.arange(0, num_examples, block_rows)
    parts = []
    for s in starts[rng.permutation(len(starts))]:
        e = min(int(s) + block_rows, num_examples)
        parts.append(int(s) + rng.permutation(e - int(s)))
    order = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return order if kept is None else order[kept[order]]


def batches_per_epoch(num_kept: int, batch_size: int) -> int:
    return -(-num_kept // batch_size)


@dataclass(frozen=True)
class EpochPlan:
    """What one rank reads in one epoch: global batches ``start_batch..`` of ``order``."""

    order: np.ndarray  # (num_kept,) row indices in visit order
    batch_size: int  # global batch (all ranks together)
    block_rows: int
    keys: tuple[str, ...]
    rank: int = 0
    world: int = 1
    start_batch: int = 0  # resume: batches already consumed this epoch
    transform: Callable[[dict], dict] | None = None  # applied to each batch where it is read (worker or thread)

    @property
    def num_batches(self) -> int:
        return batches_per_epoch(len(self.order), self.batch_size)

    def rows(self, g: int) -> tuple[np.ndarray, float]:
        """(rows of this rank's share of global batch g, loss weight); see distributed.local_slice."""
        from kdstream.distill.distributed import Dist, local_slice

        batch = self.order[g * self.batch_size : (g + 1) * self.batch_size]
        idx, weight = local_slice(len(batch), Dist(self.rank, self.world))
        return batch[idx], weight


class BlockReader:
    """Rows of a source by index, reading whole blocks and caching the last ``cache`` of them."""

    def __init__(self, source: ExampleSource, block_rows: int, keys: tuple[str, ...], cache: int = 2) -> None:
        self.source, self.block_rows, self.cache = source, block_rows, cache
        self.keys = tuple(dict.fromkeys((*keys, "example_id")))
        self._blocks: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.blocks_read = 0

    def _block(self, b: int) -> dict[str, np.ndarray]:
        if b not in self._blocks:
            start = b * self.block_rows
            self._blocks[b] = self.source.read(start, min(start + self.block_rows, len(self.source)), self.keys)
            self.blocks_read += 1
            while len(self._blocks) > self.cache:
                self._blocks.popitem(last=False)
        self._blocks.move_to_end(b)
        return self._blocks[b]

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """{key: array with a leading axis of len(rows)} in the order of ``rows``."""
        blocks, offsets = np.divmod(rows, self.block_rows)
        out: dict[str, np.ndarray] = {}
        for b in dict.fromkeys(blocks.tolist()):  # blocks in first-use order
            data, sel = self._block(b), np.flatnonzero(blocks == b)
            for k in self.keys:
                if k not in out:
                    out[k] = np.empty((len(rows), *data[k].shape[1:]), data[k].dtype)
                out[k][sel] = data[k][offsets[sel]]
        return out


def _batches(source: ExampleSource, plan: EpochPlan, worker: int, workers: int) -> Iterator[tuple[dict, float]]:
    reader = BlockReader(source, plan.block_rows, plan.keys)
    for g in range(plan.start_batch + worker, plan.num_batches, workers):
        rows, weight = plan.rows(g)
        batch = reader.take(rows)
        yield (batch if plan.transform is None else plan.transform(batch)), weight


def tensors(batch: dict) -> dict:
    """numpy arrays of a batch → torch tensors (sharing memory); other values (a cross-tokenizer
    batch's examples) as they are."""
    import torch

    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def _torch_dataset(open_source: Callable[[], ExampleSource], plan: EpochPlan):
    import torch

    class _Dataset(torch.utils.data.IterableDataset):
        """Worker w of W yields batches g ≡ w (mod W); DataLoader's round-robin restores g order."""

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            w, n = (0, 1) if info is None else (info.id, info.num_workers)
            for batch, weight in _batches(open_source(), plan, w, n):
                yield tensors(batch), weight

    return _Dataset()


def _prefetched(it: Iterator, depth: int) -> Iterator:
    """Run ``it`` on a background thread, ``depth`` items ahead (store reads overlap compute)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def fill() -> None:
        try:
            for item in it:
                q.put(item)
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    threading.Thread(target=fill, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def stream_batches(open_source: Callable[[], ExampleSource], plan: EpochPlan, *, workers: int = 0,
                   prefetch: int = 2) -> Iterator[tuple[dict, float]]:
    """This rank's (batch of torch tensors, loss weight) for global batches ``plan.start_batch..``.

    ``open_source`` is a picklable zero-argument callable (each DataLoader worker opens its own
    store handle). workers=0 reads on a background thread ``prefetch`` batches ahead; workers>0
    uses a torch DataLoader with that many processes and ``prefetch`` batches per worker.
    """
    import torch

    if workers == 0:
        it = ((tensors(b), w) for b, w in _batches(open_source(), plan, 0, 1))
        yield from (_prefetched(it, prefetch) if prefetch else it)
        return
    loader = torch.utils.data.DataLoader(_torch_dataset(open_source, plan), batch_size=None, num_workers=workers,
                                         prefetch_factor=max(1, prefetch))
    try:
        yield from loader
    except KdError as exc:  # torch re-raises a worker's error with the worker's traceback in the message
        raise KdError(worker_error_message(str(exc))) from None


def worker_error_message(text: str) -> str:
    """The original one-line message of a KdError that torch re-raised from a DataLoader worker
    ("Caught KdError in DataLoader worker process 0. Original Traceback … KdError: MESSAGE")."""
    for line in reversed(text.splitlines()):
        head, sep, message = line.partition("KdError: ")
        if sep and head.strip() in ("", "kdstream.errors."):
            return message
    return text.splitlines()[0] if text else text


class Given:
    """A picklable ``open_source`` for an in-memory source (e.g. packed examples)."""

    def __init__(self, source: ExampleSource) -> None:
        self.source = source

    def __call__(self) -> ExampleSource:
        return self.source


class OpenStore:
    """A picklable ``open_source`` for a logit store at a path or URL, or several read as one
    (comma-separated URLs: storage.open_stores). ``identity``: the store (union) the run checked at
    its start; ``part_identities``: a union's parts'. A reader (thread, DataLoader worker,
    held-out pass) that reopens the URLs and finds another store there (rewritten and finalized
    again meanwhile) stops with KdError naming it."""

    def __init__(self, url: str, identity: str | None = None, part_identities: tuple | None = None) -> None:
        self.url = url
        self.identity = identity
        self.part_identities = part_identities

    @classmethod
    def of(cls, store) -> OpenStore:
        """Reopens ``store`` (a LogitStore or a StoreUnion) as it is now."""
        from kdstream.storage.union import store_spec

        return cls(store_spec(store), store.identity, getattr(store, "part_identities", None))

    def __call__(self) -> ExampleSource:
        from kdstream.storage import open_stores
        from kdstream.storage.memory import keep_freed_memory

        keep_freed_memory()  # the reading process: see storage/memory.py
        return open_stores(self.url, identity=self.identity, part_identities=self.part_identities)
