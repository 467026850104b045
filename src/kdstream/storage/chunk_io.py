"""Read whole chunks of several arrays at once: all objects fetched concurrently, each checked and
decompressed straight into the output, without zarr's per-read indexing machinery.

The arrays kdstream writes are chunked along axis 0 only, with the codecs ``bytes`` (little endian)
→ ``blosc`` → ``crc32c``, qdelta ``topk_logprobs`` with a ``transpose`` before them (stored
slot-major, docs/store-format.md). For those, reading rows [start, stop) is: get
the objects of chunks ⌈start/R⌉…, check each one's crc32c (the last 4 bytes, little endian, of
the rest), blosc-decompress it into its slot of one output buffer. That is what zarr does too,
but zarr's generic path (selection indexing, a codec pipeline per chunk, a copy from each chunk
into the selection) adds a fixed cost to every array read, which this path avoids (read rates of
the shipped store: docs/benchmarks.md). Arrays with any other layout (format version 1's
zstd codec, chunking along another axis) return None from ``plan`` and are read through zarr.

Every chunk object must exist whenever it is read (``Plan.strict``; stores written with chunk_done
markers are written with write_empty_chunks, so a missing object always means a lost or not yet
written chunk): ``MissingChunk``. Only older stores without markers, whose writer skipped
all-zero chunks, read a missing object as the fill value, as zarr does. With a manifest (format
version 4 and later) each object's crc32c trailer must also equal its manifest entry: 4 bytes compared per
chunk, ``ChangedChunk`` otherwise.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import numpy as np

from kdstream.storage.packing import running_sum_by_slot


class CorruptChunk(ValueError):
    """A chunk whose checksum fails or that does not decompress to its size (message says which)."""


class MissingChunk(LookupError):
    """A chunk object that is not in the store where one must be."""


class ChangedChunk(ValueError):
    """A chunk object intact in itself whose crc32c is not its manifest entry: rewritten or replaced."""


@dataclass(frozen=True)
class Plan:
    """How to read one array's chunks directly: its store, key prefix and chunk geometry."""

    array: object  # the zarr.Array
    rows: int  # rows per chunk (axis 0)
    row_shape: tuple[int, ...]
    dtype: np.dtype
    fill: object
    order: tuple[int, ...] | None = None  # a transpose codec's order: the chunk is stored as chunk.transpose(order)
    strict: bool = False  # a missing object is an error (MissingChunk), not the fill value
    expected: np.ndarray | None = None  # (C,) uint32: each chunk's crc32c from the store's manifest
    # a reader's qdelta delta codes, stored slot-major (order[0] is the last axis): return their
    # running sums over the slots (absolute codes), taken before the transpose back, where the
    # slots are whole contiguous arrays (packing.running_sum_by_slot; faster than numpy's cumsum)
    running_sum: bool = False

    @property
    def chunk_bytes(self) -> int:
        return self.rows * int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize


def plan(array) -> Plan | None:
    """A Plan for ``array`` when it has the layout kdstream writes, else None (read it through zarr)."""
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, TransposeCodec

    try:
        codecs = array.metadata.codecs
        chunks = tuple(array.chunks)
    except (AttributeError, NotImplementedError):  # format 2 metadata, sharding, …
        return None
    order = None
    if codecs and isinstance(codecs[0], TransposeCodec):
        order, codecs = tuple(int(i) for i in codecs[0].order), codecs[1:]
    if (len(codecs) != 3 or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[1], BloscCodec)
            or not isinstance(codecs[2], Crc32cCodec) or chunks[1:] != tuple(array.shape[1:])):
        return None
    dtype = np.dtype(array.dtype)
    if dtype.itemsize > 1 and str(getattr(codecs[0].endian, "value", codecs[0].endian)) != "little":
        return None
    return Plan(array, chunks[0], tuple(array.shape[1:]), dtype.newbyteorder("<"), array.metadata.fill_value, order)


def chunk_key(array, c: int) -> str:
    """The store key of chunk c (along axis 0) of ``array``: "topk_logprobs/c/1/0/0"."""
    return array.store_path.path.rstrip("/") + "/" + array.metadata.encode_chunk_key((c,) + (0,) * (array.ndim - 1))


def _key(p: Plan, c: int) -> str:
    return chunk_key(p.array, c)


def check_object(p: Plan, raw, c: int) -> int:
    """The crc32c trailer of chunk c's object after checking it without decompressing: present
    (MissingChunk), trailer = crc32c of the rest and blosc header size = the chunk's (CorruptChunk),
    trailer = manifest entry when the plan has one (ChangedChunk)."""
    import google_crc32c

    if raw is None:
        raise MissingChunk(f"chunk object {_key(p, c)} is missing")
    data = raw.as_numpy_array()  # (n,) uint8 view of the object
    body, stored = data[:-4], int.from_bytes(bytes(data[-4:]), "little")
    if len(data) < 4 or google_crc32c.value(body) != stored:
        raise CorruptChunk("stored and computed checksum do not match (crc32c)")
    nbytes = int.from_bytes(bytes(body[4:8]), "little") if len(body) >= 16 else -1  # blosc header: uncompressed size
    if nbytes != p.chunk_bytes:
        raise CorruptChunk(f"blosc decompression error: the chunk holds {nbytes} bytes, expected {p.chunk_bytes}")
    _check_manifest(p, stored, c)
    return stored


def _check_manifest(p: Plan, crc: int, c: int) -> None:
    """ChangedChunk unless chunk c's crc32c trailer is its manifest entry (no manifest: nothing to check)."""
    if p.expected is None:
        return
    if c >= len(p.expected):
        raise ChangedChunk("it is not in the manifest")
    if int(p.expected[c]) != crc:
        raise ChangedChunk(f"its crc32c {crc:08x} is not the manifest's {int(p.expected[c]):08x}")


# Page faults can be most of a chunk read on a local store: a fresh buffer of a few MB is often new
# memory from the kernel, zeroed page by page, that glibc hands back when it is freed (storage/
# memory.py). Buffers a read uses only on its way (a transposed chunk, the stored form of an array
# decoded into another) are kept per thread and reused by its next read (docs/benchmarks.md,
# read rates).
_SCRATCH = threading.local()
SCRATCH_LIMIT = 64 << 20  # bytes: larger buffers (a whole store read at once) are not kept


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array of ``shape`` whose memory this thread reuses at its next call with
    the same ``name``: for an intermediate its caller has finished with before that call."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if n > SCRATCH_LIMIT:
        return np.empty(shape, dtype)
    buf = _SCRATCH.__dict__.get(name)
    if buf is None or buf.nbytes < n:
        buf = _SCRATCH.__dict__[name] = np.empty(n, np.uint8)
    return buf[:n].view(dtype).reshape(shape)


def _decode_into(p: Plan, raw, dest: np.ndarray, c: int | None = None) -> None:
    """Check the crc32c of one chunk object (c) and blosc-decompress it into ``dest`` (its bytes); a
    transposed chunk goes through a buffer in its stored order and is transposed back into dest.
    With a manifest the crc32c must also be chunk c's entry (ChangedChunk)."""
    import google_crc32c
    from numcodecs import blosc

    data = raw.as_numpy_array()  # (n,) uint8 view of the object
    body, stored = data[:-4], bytes(data[-4:])
    if np.uint32(google_crc32c.value(body)).tobytes() != stored:
        raise CorruptChunk("stored and computed checksum do not match (crc32c)")
    if c is not None:
        _check_manifest(p, int.from_bytes(stored, "little"), c)
    nbytes = int.from_bytes(bytes(body[4:8]), "little") if len(body) >= 16 else -1  # blosc header: uncompressed size
    if nbytes != dest.nbytes:  # decompress() would fill only part of a larger dest, silently
        raise CorruptChunk(f"blosc decompression error: the chunk holds {nbytes} bytes, expected {dest.nbytes}")
    shape = (p.rows, *p.row_shape)
    as_stored = dest if p.order is None else scratch("transposed", tuple(shape[i] for i in p.order), p.dtype)
    try:
        blosc.decompress(body, as_stored)
    except RuntimeError as exc:  # numcodecs: "error during blosc decompression: …"
        raise CorruptChunk(str(exc)) from None
    if p.order is not None:
        if p.running_sum:
            running_sum_by_slot(as_stored)
        np.copyto(dest.view(p.dtype).reshape(shape), as_stored.transpose(np.argsort(p.order)))


def _spans(plans: dict[str, Plan], start: int, stop: int, per_chunk: frozenset[str], chunk_rows: int
           ) -> dict[str, tuple[int, int]]:
    """Chunk indices [a, b) of each array that rows [start, stop) need."""
    if stop <= start:
        return {n: (0, 0) for n in plans}
    rows = {n: chunk_rows if n in per_chunk else p.rows for n, p in plans.items()}  # per-chunk: 1 row per chunk
    return {n: (start // rows[n], -(-stop // rows[n])) for n in plans}


async def fetch(plans: dict[str, Plan], start: int, stop: int, per_chunk: frozenset[str], chunk_rows: int) -> list:
    """Every chunk object rows [start, stop) need, of every planned array, fetched concurrently:
    [(name, chunk, object | None | exception)]. Decompression is left to ``assemble`` so that it
    runs in the caller's thread, where blosc uses its own threads (numcodecs only threads blosc
    in the main thread)."""
    return await fetch_objects(plans, _jobs(plans, start, stop, per_chunk, chunk_rows))


def _jobs(plans: dict[str, Plan], start: int, stop: int, per_chunk: frozenset[str], chunk_rows: int
          ) -> list[tuple[str, int]]:
    """[(array name, chunk)]: every chunk object rows [start, stop) need, array by array."""
    return [(n, c) for n, (a, b) in _spans(plans, start, stop, per_chunk, chunk_rows).items() for c in range(a, b)]


def fetch_local(plans: dict[str, Plan], start: int, stop: int, per_chunk: frozenset[str],
                chunk_rows: int) -> list | None:
    """``fetch``'s result read in the calling thread, file by file, when every planned array is
    on a local disk (zarr's LocalStore); None otherwise. A local file read costs tens of
    microseconds; sending each to zarr's event loop thread and from there to a worker thread
    costs far more, a large share of a fixed top-64 read (docs/benchmarks.md, read rates)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import LocalStore

    if not plans or any(type(p.array.store_path.store) is not LocalStore for p in plans.values()):
        return None
    proto = default_buffer_prototype()
    out = []
    for n, c in _jobs(plans, start, stop, per_chunk, chunk_rows):
        p = plans[n]
        try:
            raw = proto.buffer.from_bytes((p.array.store_path.store.root / _key(p, c)).read_bytes())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # as LocalStore.get: absent
            raw = None
        except OSError as exc:
            raw = exc
        out.append((n, c, raw))
    return out


async def fetch_objects(plans: dict[str, Plan], jobs: list[tuple[str, int]]) -> list:
    """The objects of chunks ``jobs`` [(array name, chunk)], fetched concurrently:
    [(name, chunk, object | None | exception)]."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()
    # At most zarr's ``async.concurrency`` requests at once (default 10; raise it for object
    # stores far away: zarr.config.set({"async.concurrency": 64})), as zarr itself would.
    limit = asyncio.Semaphore(max(1, int(zarr.config.get("async.concurrency") or 10)))

    async def get(name: str, c: int):
        p = plans[name]
        async with limit:
            return await p.array.store_path.store.get(_key(p, c), prototype=proto)

    got = await asyncio.gather(*(get(n, c) for n, c in jobs), return_exceptions=True)
    return [(n, c, raw) for (n, c), raw in zip(jobs, got)]


def assemble(plans: dict[str, Plan], fetched: list, start: int, stop: int, per_chunk: frozenset[str],
             chunk_rows: int, transient: frozenset[str] = frozenset()) -> dict[str, np.ndarray | BaseException]:
    """Rows [start, stop) of each planned array from ``fetch``'s objects (for ``per_chunk`` arrays:
    the rows of the chunks holding examples start…stop-1), each chunk checked and decompressed
    into its slot of one buffer; a failure is returned in place of that array (the caller names it).
    ``transient`` arrays are decompressed into this thread's scratch memory (``scratch``): the
    caller must be done with them before its next assemble."""
    spans = _spans(plans, start, stop, per_chunk, chunk_rows)
    buffers = {n: (scratch(f"assemble:{n}", shape, plans[n].dtype) if n in transient else np.empty(shape, plans[n].dtype))
               for n, (a, b) in spans.items()
               for shape in [((b - a) * plans[n].rows, *plans[n].row_shape)]}  # whole chunks, sliced below
    out: dict[str, np.ndarray | BaseException] = {}
    for n, c, raw in fetched:
        if n in out:
            continue  # this array already failed
        p, a = plans[n], spans[n][0]
        slot = buffers[n][(c - a) * p.rows : (c - a + 1) * p.rows]  # (R, *row) contiguous
        try:
            if isinstance(raw, BaseException):
                raise raw
            if raw is None and not p.strict:  # an older store's all-zero chunk: the fill value, as zarr reads it
                slot[...] = p.fill
            elif raw is None:
                raise MissingChunk(f"chunk object {_key(p, c)} is missing")
            else:
                _decode_into(p, raw, slot.reshape(-1).view(np.uint8), c)
        except Exception as exc:  # one array's failure does not hide the others'
            exc.chunk = c  # which chunk, for the caller's message
            out[n] = exc
    for n, (a, b) in spans.items():
        if n not in out:
            lo = 0 if n in per_chunk else start - a * plans[n].rows
            out[n] = buffers[n][lo : lo + (b - a if n in per_chunk else stop - start)]
    return out


def read_chunk(p: Plan, c: int) -> np.ndarray:
    """Chunk c of a planned array, checked (present when strict, crc32c, manifest) and decoded:
    (rows, *row_shape), the last chunk padded as stored."""
    from zarr.core.sync import sync

    [(_, _, raw)] = sync(fetch_objects({"a": p}, [("a", c)]))
    if isinstance(raw, BaseException):
        raise raw
    if raw is None and not p.strict:
        return np.full((p.rows, *p.row_shape), p.fill, dtype=p.dtype)
    if raw is None:
        raise MissingChunk(f"chunk object {_key(p, c)} is missing")
    out = np.empty((p.rows, *p.row_shape), dtype=p.dtype)
    _decode_into(p, raw, out.reshape(-1).view(np.uint8), c)
    return out


def scan(plans: dict[str, Plan], chunks, window: int = 8):
    """Check the objects of ``chunks`` (indices, in order) of every planned array without
    decompressing them (``check_object``), ``window`` chunks (of every array) fetched at a time so
    memory stays bounded: yields (name, chunk, crc32c trailer | the exception)."""
    from zarr.core.sync import sync

    chunks = list(chunks)
    for lo in range(0, len(chunks), window):
        jobs = [(n, c) for c in chunks[lo : lo + window] for n in plans]
        for n, c, raw in sync(fetch_objects(plans, jobs)):
            try:
                if isinstance(raw, BaseException):
                    raise raw
                yield n, c, check_object(plans[n], raw, c)
            except (CorruptChunk, MissingChunk, ChangedChunk) as exc:
                yield n, c, exc
