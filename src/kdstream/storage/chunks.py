"""Which chunks of a store exist: done markers, chunk files, and which writer owns which chunk.

A store's rows are cut into chunks of ``chunk_rows`` examples (the last one may be shorter);
chunk c holds rows [c·R, min((c+1)·R, S)). Every chunk is written whole, once, by one writer,
then marked in ``chunk_done`` (DONE_ARRAY): a uint8 array of one element per chunk with chunk
size 1, so each marker is its own file/object and two writers never write the same object.

Writers are handed *groups* of consecutive chunks: group g holds chunks [g·G, (g+1)·G) with
G = max(1, batch_size // chunk_rows), so one engine call never spans two groups and the rows of
each call depend only on (chunk_rows, batch_size), not on the number of workers or on where a
run resumed: the teacher sees the same batches, and gives the same values, however the store is
written. Worker i of N owns the groups g with g % N == i.
"""
from __future__ import annotations

import math

DONE_ARRAY = "chunk_done"


def num_chunks(num_examples: int, chunk_rows: int) -> int:
    return math.ceil(num_examples / chunk_rows)


def chunk_slice(c: int, chunk_rows: int, num_examples: int) -> slice:
    """Rows of chunk c."""
    return slice(c * chunk_rows, min((c + 1) * chunk_rows, num_examples))


def describe(chunks: list[int], chunk_rows: int, num_examples: int, limit: int = 5) -> str:
    """'3 (rows 12:16), 7 (rows 28:32), … (9 in all)' for messages."""
    spans = [chunk_slice(c, chunk_rows, num_examples) for c in chunks[:limit]]
    shown = [f"{c} (rows {s.start}:{s.stop})" for c, s in zip(chunks, spans)]
    return ", ".join(shown) + (f", … ({len(chunks)} in all)" if len(chunks) > limit else "")


def chunks_per_group(batch_size: int, chunk_rows: int) -> int:
    return max(1, batch_size // chunk_rows)


def owned_groups(total_chunks: int, group_chunks: int, num_workers: int, worker_index: int) -> list[range]:
    """The groups worker ``worker_index`` of ``num_workers`` writes, each a range of chunk indices.

    Strided (g % N == i) rather than contiguous blocks: the shares differ by at most one group for
    any count, and a chunk's owner follows from its index alone (``owner``), so a missing chunk
    names the worker to rerun without knowing how blocks were rounded.
    """
    groups = math.ceil(total_chunks / group_chunks)
    return [range(g * group_chunks, min((g + 1) * group_chunks, total_chunks))
            for g in range(worker_index, groups, num_workers)]


def owner(c: int, group_chunks: int, num_workers: int) -> int:
    """Index of the worker that owns chunk c."""
    return (c // group_chunks) % num_workers


def stored_chunks(array) -> set[int] | None:
    """Indices (along axis 0) of the chunks of ``array`` that have a file/object in the store,
    by listing its prefix once; None when the store cannot list (plain HTTP without listings).

    A listing that does not show the array's own zarr.json is taken as "cannot list".
    """
    from zarr.core.sync import sync

    prefix = array.store_path.path.rstrip("/") + "/"

    async def keys() -> set[str]:
        return {key[len(prefix):] async for key in array.store_path.store.list_prefix(prefix)}

    try:
        listed = sync(keys())
    except (NotImplementedError, OSError, ValueError):
        return None
    if "zarr.json" not in listed:
        return None
    rest = (0,) * (array.ndim - 1)
    n = math.ceil(array.shape[0] / array.chunks[0])
    return {c for c in range(n) if array.metadata.encode_chunk_key((c, *rest)) in listed}


def done_chunks(group) -> set[int]:
    """Chunks marked written in ``group`` (an empty set when it has no DONE_ARRAY yet).

    Found by listing the markers' prefix (one request per 1,000 objects on S3, rather than one
    read per chunk); a marker exists only once written with value 1 (zarr writes chunk objects
    atomically on local disk, and whole on object stores). Falls back to reading the values where
    the store cannot list.
    """
    import numpy as np

    if DONE_ARRAY not in group:
        return set()
    markers = group[DONE_ARRAY]
    listed = stored_chunks(markers)
    if listed is not None:
        return listed
    return set(np.flatnonzero(np.asarray(markers[:]) == 1).tolist())
