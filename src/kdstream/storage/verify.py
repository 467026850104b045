"""Check a logit store end to end: metadata, every chunk's crc32c checksum, example ids, token ids
(within the vocabulary: a forgery with its checksums recomputed passes every crc32c), and for
format version 4 and later the integrity record: attributes and manifest against their checksums, every
chunk against its manifest entry, every array's metadata against the layout it was finalized with;
and the tokenizer files a store carries against the sha256 its attributes record.

``open_store`` refuses the first corrupt chunk it meets; ``verify_store`` reads them all (one
slice per chunk, along axis 0) and names every bad one, so a user knows exactly which files to
re-copy. It also runs on an incomplete store, reporting that as a problem, with the chunks
not written yet.

A chunk that was never written has no file, and zarr reads it as the fill value (0) without a
word; so verify also checks that each chunk is marked in ``chunk_done`` and that every array has
its file (a listing per array). Stores written before the markers (no ``chunk_done``) are checked
through ``target_rank`` instead, whose values (ranks, >= 1) are never all 0 in a written chunk.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kdstream.errors import KdError
from kdstream.storage import chunk_io, id_table, integrity, packing, shapes, tokenizer_files
from kdstream.storage import encoding as enc
from kdstream.storage.chunks import DONE_ARRAY, describe, stored_chunks
from kdstream.storage.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LENGTH_ARRAY,
    PER_CHUNK,
    arrays_of,
    is_conversations,
    is_packed,
    is_ragged,
)
from kdstream.storage.selection import pad_mask


@dataclass
class VerifyReport:
    ok: bool
    chunks_checked: int
    corrupt: list[str] = field(default_factory=list)  # "topk_logprobs chunk 1 (rows 4:8): …"
    problems: list[str] = field(default_factory=list)  # anything else: incomplete, missing arrays, ids


def open_group(url: str):
    """The store's Zarr group, complete or not; ``KdError`` unless it is a kdstream store."""
    import zarr

    url = str(url)
    try:
        group = zarr.open_group(url, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        raise KdError(f"no logit store at {url}: check the path or URL") from None
    except ValueError as exc:  # e.g. a zarr.json that is not valid JSON
        raise KdError(f"store {url} has unreadable metadata ({exc}): re-copy or regenerate it") from None
    if group.attrs.get("format") != FORMAT_NAME:
        raise KdError(f"{url} is a Zarr group but not a kdstream logit store: point at a store")
    return group


def _chunk_error(exc: ValueError | RuntimeError) -> str:
    """Why a chunk failed to decode, in a few words.

    zarr raises ValueError("Stored and computed checksum do not match…") for a crc32c mismatch,
    RuntimeError("Zstd decompression error…") for bytes that pass the checksum but do not
    decompress, and ValueError from numpy when the decoded size is wrong. I/O errors (network,
    permissions: OSError) are not corruption and are not caught.
    """
    msg = str(exc)
    if isinstance(exc, chunk_io.ChangedChunk):
        return f"differs from the store's manifest (rewritten or replaced: {msg})"
    if isinstance(exc, ValueError) and "checksum" in msg.lower():
        return "crc32c checksum mismatch"
    return f"undecodable ({msg.splitlines()[0] if msg else type(exc).__name__})"


def _id_problems(example_id: np.ndarray) -> list[str]:
    """example_id (S,) must be 0..S-1, each once (the packing position of each example)."""
    n = len(example_id)
    if np.array_equal(np.sort(example_id), np.arange(n)):
        return []
    values, counts = np.unique(example_id, return_counts=True)
    dup = values[counts > 1]
    out_of_range = int(((example_id < 0) | (example_id >= n)).sum())
    detail = []
    if len(dup):
        detail.append(f"{len(dup)} duplicated (e.g. {int(dup[0])})")
    if out_of_range:
        detail.append(f"{out_of_range} outside 0..{n - 1}")
    return [f"example_id is not 0..{n - 1} each once: {', '.join(detail)}"]


def _mass_problem(name: str, where: str, stored: np.ndarray, k: int, encoding: dict,
                  lengths: np.ndarray | None = None) -> str | None:
    """A zeroed or missing topk_logprobs chunk reads as logprob 0 everywhere: mass k > 1.

    zarr does not write all-zero chunks (write_empty_chunks is off) and returns zeros for an
    absent chunk file, so a lost file is only visible through its impossible values. qdelta codes
    (before the reader's renormalisation) may overshoot a mass of 1 by e^(scale/2): allow 1%.
    ``lengths``: a ragged store's topk_len chunk (its padding slots hold no mass).
    """
    if encoding.get("topk_logprobs") == "qdelta":
        logp, slack = -np.cumsum(stored, -1, dtype=np.int64) * float(encoding["scale"]), 1e-2
    else:
        logp, slack = stored, 1e-3
    logp = logp.astype(np.float64)
    if lengths is not None:
        logp[pad_mask(lengths.astype(np.int64), logp.shape[-1])] = -np.inf
    mass = np.exp(logp).sum(-1)  # (B, L-1)
    if k > 1 and (mass > 1.0 + slack).any():
        return f"{name} {where}: top-k probability mass above 1 (max {mass.max():.3f}); a missing or zeroed chunk"
    return None


def _chunk_or_none(plan: chunk_io.Plan | None, c: int, rows: int) -> np.ndarray | None:
    """Chunk c's first ``rows`` rows, or None when it cannot be read (its own check reports why)."""
    if plan is None:
        return None
    try:
        return chunk_io.read_chunk(plan, c)[:rows]
    except (chunk_io.MissingChunk, ValueError, RuntimeError):
        return None


def _written_chunks(group, arrays: dict[str, Any], attrs: dict[str, Any],
                    problems: list[str]) -> tuple[set[int], dict[str, set[int] | None]]:
    """Chunks never written (reported in ``problems``) and, per array, the chunks that have a file
    (None where the store cannot be listed)."""
    files = {name: stored_chunks(arr) for name, arr in arrays.items()}
    try:
        n, rows, total = int(attrs["num_examples"]), int(attrs["chunk_rows"]), shapes.chunk_count(attrs)
    except (KeyError, TypeError, ValueError):
        return set(), files
    if DONE_ARRAY in group:
        found = shapes.problems(DONE_ARRAY, group[DONE_ARRAY], (total,), 1)
        if found:  # not read: its size is not the store's
            problems.append(f"{found[0]}: re-copy {DONE_ARRAY}/ (edited or damaged)")
            return set(), files
        try:
            marks = np.asarray(group[DONE_ARRAY][:])  # (C,) 1 = written
        except (ValueError, RuntimeError) as exc:
            problems.append(f"{DONE_ARRAY} markers unreadable ({_chunk_error(exc)}): re-copy {DONE_ARRAY}/")
            return set(), files
        unwritten = set(np.flatnonzero(marks != 1).tolist())
    elif files.get("target_rank") is not None:  # older layout: ranks are >= 1, never an all-0 chunk
        unwritten = set(range(total)) - files["target_rank"]
    else:
        return set(), files
    if unwritten:
        where = describe(sorted(unwritten), rows, n)
        problems.append(f"{len(unwritten)} of {total} chunks never written (they would read as zeros): chunk {where}")
    return unwritten, files


def _integrity(group, url: str, attrs: dict[str, Any], problems: list[str]) -> dict[str, np.ndarray]:
    """A complete version >= 4 store's manifest {array: (C,) crc32c}, after checking the attributes'
    and the manifest's checksums ({} and a problem when either fails). A store that claims an older
    version than the record it carries is a problem, and is checked all the same."""
    try:
        integrity.claimed_version(group, url, attrs)
    except KdError as exc:
        problems.append(str(exc))
    version = integrity.format_version(url, attrs)
    if attrs.get("complete") is not True or (version < integrity.INTEGRITY_VERSION and
                                             integrity.carried_record(group, attrs) is None):
        return {}
    try:
        integrity.check_attrs(url, attrs)
    except KdError:
        problems.append("attributes do not match their checksum (integrity.attrs_sha256): edited or damaged")
    record = attrs.get(integrity.INTEGRITY)
    try:
        return integrity.read_manifest(group, url, attrs, record if isinstance(record, dict) else {})
    except KdError as exc:  # the message without its "store URL: " and its advice
        problems.append(str(exc).removeprefix(f"store {url}: ").rsplit(": re-copy", 1)[0].rsplit("; ", 1)[0])
        return {}


def _plans(arrays: dict[str, Any], manifest: dict[str, np.ndarray], attrs: dict[str, Any], strict: bool,
           problems: list[str]) -> dict[str, chunk_io.Plan]:
    """Direct-read plans (with their manifest entries) of the arrays that have one; with a manifest,
    each array's layout must be the one it was finalized with."""
    layouts = (attrs.get("manifest") or {}).get("layout") or {}
    plans = {}
    for name, arr in arrays.items():
        p = chunk_io.plan(arr)
        if manifest and (p is None or name not in manifest or integrity.layout(p) != layouts.get(name)):
            problems.append(f"array {name}: its metadata ({name}/zarr.json) is not what the store was finalized with")
        if p is not None:
            plans[name] = replace(p, strict=strict, expected=manifest.get(name))
    return plans


def verify_store(url: str) -> VerifyReport:
    """Read every chunk of every array of the store at ``url`` (path or fsspec URL)."""
    group = open_group(url)
    attrs = dict(group.attrs)
    version = integrity.format_version(str(url), attrs)  # KdError when not an integer: nothing else can be read
    problems: list[str] = []
    manifest = _integrity(group, str(url), attrs, problems)
    if version > FORMAT_VERSION:
        problems.append(f"format version {attrs['format_version']} is newer than this kdstream ({FORMAT_VERSION})")
    complete = attrs.get("complete") is True
    if not complete:
        problems.append("store is incomplete (attribute complete is not true): its precompute did not finish")
    arrays = {}
    for name in arrays_of(attrs):
        try:
            arrays[name] = group[name]
        except KeyError:
            problems.append(f"array {name} is missing")
        except ValueError as exc:  # its zarr.json is not valid JSON / UTF-8
            problems.append(f"array {name} has unreadable metadata ({type(exc).__name__}): re-copy {name}/zarr.json")
    found, misshapen = shapes.data_problems(attrs, arrays)  # before any read: they are not read at all
    problems += found
    arrays = {name: arr for name, arr in arrays.items() if name not in misshapen}
    unwritten, files = _written_chunks(group, arrays, attrs, problems)
    markers = DONE_ARRAY in group  # written with write_empty_chunks: every written chunk has a file
    plans = _plans(arrays, manifest, attrs, markers, problems)

    ragged = is_ragged(attrs)
    corrupt: list[str] = []
    checked = 0
    example_ids: list[np.ndarray] = []  # chunks of example_id, checked as a whole at the end
    ids_readable = "example_id" in arrays
    for name, arr in arrays.items():
        rows = int(arr.chunks[0])  # the array's real chunk grid, so each slice is exactly one chunk
        n = int(arr.shape[0])
        for i, start in enumerate(range(0, n, rows)):
            stop = min(start + rows, n)
            where = f"chunk {i} (rows {start}:{stop})"
            if name in PER_CHUNK:  # row i of id_table belongs to chunk i of the per-example arrays
                R, S = int(attrs.get("chunk_rows", 1)), int(attrs.get("num_examples", 0))
                where = f"chunk {i} (rows {i * R}:{min((i + 1) * R, S)})"
            checked += 1
            # Without markers (older stores) zarr skipped all-zero chunks: only a missing
            # target_rank file (ranks >= 1) is sure to be a gap; the others are read as zeros.
            if files.get(name) is not None and i not in files[name] and (markers or name == "target_rank"):
                if i not in unwritten:  # marked written (or the old layout): its file went missing
                    problems.append(f"{name} {where}: chunk file missing (lost: readers refuse it): re-copy "
                                    f"{name}/{arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))}")
                continue
            try:
                if name in plans:  # the object itself: crc32c, manifest entry, then decoded
                    data = chunk_io.read_chunk(plans[name], i)[: stop - start]  # (stop-start, *per-example shape)
                else:
                    data = np.asarray(arr[start:stop])
            except chunk_io.MissingChunk:  # where the store cannot be listed
                if i not in unwritten:
                    problems.append(f"{name} {where}: chunk file missing: re-copy {chunk_io.chunk_key(arr, i)}")
                continue
            except (ValueError, RuntimeError) as exc:
                key = arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
                corrupt.append(f"{name} {where}: {_chunk_error(exc)} (file {name}/{key})")
                ids_readable = ids_readable and name != "example_id"
                continue
            # Value checks only mean something once every row was written.
            if complete and name == "topk_logprobs":
                lengths = _chunk_or_none(plans.get(LENGTH_ARRAY), i, stop - start) if ragged else None
                if not ragged or lengths is not None:  # an unreadable topk_len chunk is reported as such
                    if lengths is not None and is_packed(attrs):  # version 6: the rows padded again first
                        logprobs = (attrs.get("encoding") or {}).get("topk_logprobs", "fp32")
                        data = packing.unpack(data, lengths, packing.slot_major(name, logprobs))
                    bad = _mass_problem(name, where, data, int(attrs.get("k", data.shape[-1])),
                                        attrs.get("encoding") or enc.encoding_attrs("fp32"), lengths)
                    if bad:
                        problems.append(bad)
            if complete and name == LENGTH_ARRAY:
                k, least = int(attrs.get("k", 0)), 0 if is_conversations(attrs) else 1  # 0: not a target position
                if data.size and (int(data.min()) < least or int(data.max()) > k):
                    problems.append(f"{name} {where}: row lengths {int(data.min())}..{int(data.max())} outside "
                                    f"{least}..{k}")
            if name in id_table.ID_ARRAYS or name == "topk_index":  # a forged id passes every checksum
                bad = id_table.outside(data, int(attrs["vocab_size"]))
                if bad is not None:
                    what = "an index into its id table" if name == "topk_index" else "token id"
                    problems.append(f"{name} {where}: {what} {bad} outside 0..{int(attrs['vocab_size']) - 1} (the "
                                    "store's vocab_size): damaged or forged")
            if name == "example_id":
                example_ids.append(data)
    # the teacher's tokenizer files (tokenizer_files.py), against the sha256 the attributes record
    corrupt += tokenizer_files.problems(group, attrs)
    checked += len(tokenizer_files.recorded(attrs))
    if complete and ids_readable and example_ids:
        problems += _id_problems(np.concatenate(example_ids).astype(np.int64))
    return VerifyReport(ok=not corrupt and not problems, chunks_checked=checked, corrupt=corrupt, problems=problems)
