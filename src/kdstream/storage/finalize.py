"""Finish a store written chunk by chunk (by one writer or several): check, then mark complete.

``finalize_store`` checks that every chunk is marked done and has its file in every array, that
each example id occurs once, and that the tokenizer files the store records are there, intact;
then it reads every chunk object of every array once, checks its crc32c and size, and writes
the manifest of those checksums (integrity.py); last, in one metadata write, the ``manifest``
and ``integrity`` attributes and ``complete: true``. Run by a single-worker precompute at its
end, and by ``kdstream store finalize STORE`` after parallel workers.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import replace
from typing import Any

import numpy as np

from kdstream.errors import KdError
from kdstream.storage import chunk_io, integrity, shapes, tokenizer_files
from kdstream.storage.chunks import DONE_ARRAY, chunks_per_group, describe, owner, stored_chunks
from kdstream.storage.schema import EXAMPLE_LENGTH, LENGTH_ARRAY, arrays_of, is_generated


def _owners(chunks: list[int], attrs: dict[str, Any]) -> str:
    """Which workers own the missing chunks, from the options the store was created with."""
    opts = attrs.get("options") or {}
    workers, batch = int(opts.get("num_workers") or 1), opts.get("batch_size")
    if workers <= 1 or not batch:
        return ""
    group = chunks_per_group(int(batch), int(attrs["chunk_rows"]))
    idx = sorted({owner(c, group, workers) for c in chunks})
    return f" (worker index {', '.join(map(str, idx))} of --num-workers {workers})"


def finalize_store(url: str, extra_attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mark the store at ``url`` complete after checking it; returns the manifest written
    (``already_complete: true`` added, and nothing written, when it was complete already).

    KdError (one line) when a chunk was never written, a written chunk's file is gone or fails its
    checksum, or an example id occurs twice; the store stays incomplete and the message says what
    to rerun.
    """
    import zarr

    from kdstream.storage.verify import open_group

    open_group(url)  # KdError unless it is a kdstream store
    group = zarr.open_group(str(url), mode="r+")
    attrs = dict(group.attrs)
    if attrs.get("complete") is True:  # finalizing twice is harmless (a rerun job, a second worker)
        return {**(attrs.get("manifest") or {}), "already_complete": True}
    n, rows = int(attrs["num_examples"]), int(attrs["chunk_rows"])
    if DONE_ARRAY not in group:
        raise KdError(f"store {url} has no {DONE_ARRAY} markers (written by an older kdstream): "
                      "rerun precompute-logits with --overwrite")
    names = arrays_of(attrs)
    # shapes first: a zarr.json re-declared larger than the store would have every read below pay for it
    shapes.check_data(url, attrs, {name: group[name] for name in names if name in group})
    done = np.asarray(shapes.check_array(url, group, DONE_ARRAY, (shapes.chunk_count(attrs),), 1)[:]) == 1  # (C,)
    missing = np.flatnonzero(~done).tolist()
    if missing:
        raise KdError(f"store {url}: {len(missing)} of {len(done)} chunks were never written: "
                      f"chunk {describe(missing, rows, n)}{_owners(missing, attrs)}; rerun precompute-logits "
                      "with the same options for them, then finalize again")

    lost: list[str] = []
    listed = True
    for name in names:
        present = stored_chunks(group[name])
        if present is None:
            listed = False  # cannot list (read-only HTTP): the markers are all there is to check
            continue
        gone = sorted(set(range(len(done))) - present)
        if gone:
            lost.append(f"{name} chunk {describe(gone, rows, n)}")
    if lost:
        raise KdError(f"store {url}: chunks marked written have no file: {'; '.join(lost[:3])}"
                      f"{' …' if len(lost) > 3 else ''}; rerun precompute-logits with the same options (it writes "
                      "them again), then finalize again")

    ids = np.asarray(group["example_id"][:]).astype(np.int64)  # (S,): small, read whole
    values, counts = np.unique(ids, return_counts=True)
    if len(values) != n:
        dup = int(values[counts > 1][0])
        where = np.flatnonzero(ids == dup).tolist()
        raise KdError(f"store {url}: example {dup} is stored more than once (rows {where[:4]}); "
                      "rerun precompute-logits with --overwrite")

    bad_files = tokenizer_files.problems(group, attrs)
    if bad_files:
        raise KdError(f"store {url}: {bad_files[0]}; rerun precompute-logits with the same options (it writes the "
                      "tokenizer files again), then finalize again")

    plans = _plans(url, group, names)
    crcs = _checksums(url, plans, len(done), rows, n)  # (A, C)
    integrity.write_manifest(group, list(names), crcs)
    manifest = {
        "chunks": len(done),
        "chunk_rows": rows,
        "examples": n,
        "example_ids": [int(values[0]), int(values[-1])] if n else [],
        "chunk_files_listed": listed,
        "finalized_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "arrays": list(names),  # the rows of MANIFEST_ARRAY
        "layout": {name: integrity.layout(p) for name, p in plans.items()},
    }
    # a version 3 store (same arrays) written by an older kdstream's workers becomes version 4 with its record
    version = max(int(attrs.get("format_version", 1)), integrity.INTEGRITY_VERSION)
    last = {**(extra_attrs or {}), "format_version": version, "manifest": manifest, "complete": True}
    if is_generated(attrs):  # its tokens and target rows were known only once the teacher had written them
        last["conversations"] = {**attrs["conversations"], **_generated_counts(group, rows)}
    final = json.loads(json.dumps({**attrs, **last}))  # as zarr.json gives them back (tuples → lists)
    record = {"attrs_sha256": integrity.attrs_sha256(final),
              "manifest_sha256": integrity.manifest_sha256(list(names), crcs)}
    group.attrs.update({**last, integrity.INTEGRITY: record})
    return {**manifest, "already_complete": False, "identity": integrity.identity(record)}


def _generated_counts(group, rows: int) -> dict[str, int]:
    """A generated store's real tokens and target positions (rows with entries), read chunk by chunk."""
    lengths = np.asarray(group[EXAMPLE_LENGTH][:], dtype=np.int64)  # (S,)
    tops = group[LENGTH_ARRAY]
    positions = sum(int(np.count_nonzero(tops[a : a + rows])) for a in range(0, len(lengths), rows))
    return {"tokens": int(lengths.sum()), "target_positions": positions}


def _plans(url: str, group, names: tuple[str, ...]) -> dict[str, chunk_io.Plan]:
    """Every array's direct-read plan (strict: a missing object is an error); KdError for a layout
    kdstream does not write (its chunks could not be checked)."""
    plans = {}
    for name in names:
        p = chunk_io.plan(group[name])
        if p is None:
            raise KdError(f"store {url}: array {name} has codecs or chunks this kdstream does not write: "
                          "rerun precompute-logits with --overwrite")
        plans[name] = replace(p, strict=True)
    return plans


def _checksums(url: str, plans: dict[str, chunk_io.Plan], chunks: int, rows: int, n: int) -> np.ndarray:
    """(A, C) uint32: the crc32c trailer of every chunk object, each checked (present, checksum, size)."""
    names = list(plans)
    crcs = np.zeros((len(names), chunks), dtype=np.uint32)
    bad: list[str] = []
    for name, c, got in chunk_io.scan(plans, range(chunks)):
        if isinstance(got, Exception):
            bad.append(f"{name} chunk {describe([c], rows, n)} ({got})")
        else:
            crcs[names.index(name), c] = got
    if bad:
        raise KdError(f"store {url}: {len(bad)} chunk(s) fail their check: {'; '.join(bad[:3])}"
                      f"{' …' if len(bad) > 3 else ''}; rerun precompute-logits with the same options (it writes "
                      "them again), then finalize again")
    return crcs
