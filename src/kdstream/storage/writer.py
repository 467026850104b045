"""Write a logit store chunk by chunk: create it (or resume it) incomplete, write each chunk whole
and mark it done, mark the store complete last (finalize.py).

Several writers may fill one store at once (``precompute-logits --num-workers N``): whichever comes
first creates the group and the arrays; the others open them, after checking that the store was
started by the same command. Each writer writes only its own chunks and their markers, never a
shared object, and never rewrites the group attributes; ``complete`` is set by one finalize step.
"""
from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kdstream.errors import KdError
from kdstream.outputs import refuse_link
from kdstream.storage import encoding as enc
from kdstream.storage import id_table, packing
from kdstream.storage import selection as sel
from kdstream.storage import tokenizer_files as tok_files
from kdstream.storage.chunks import DONE_ARRAY, chunk_slice, done_chunks, num_chunks
from kdstream.storage.integrity import MANIFEST_ARRAY
from kdstream.storage.schema import (
    CONVERSATION_VERSION,
    EXAMPLE_LENGTH,
    FIXED_VERSION,
    FORMAT_NAME,
    GENERATION_ARRAYS,
    LENGTH_ARRAY,
    PER_CHUNK,
    RAGGED_VERSION,
    SAMPLED_ARRAYS,
    V1_ARRAYS,
    V2_ARRAYS,
    V3_FP32,
    V3_QDELTA,
    array_specs,
    default_chunk_rows,
    stored_arrays,
)

# blosc clevel 6 (zstd level 11): smaller than 5 at k = 64 for about the same write speed; 7 is
# barely smaller and writes much slower (the codec comparison: docs/benchmarks.md, encoding search).
BLOSC_LEVEL = 6

# What write_chunk / append take: the teacher's values as produced (float logprobs, raw ids),
# per example row; the writer encodes them into the stored arrays. ``tail_mass`` is optional
# (computed from the top-k logprobs when absent). A ragged store (``selection``) may also be given
# ``topk_len`` (n, L-1), the entries of each row to keep; otherwise the selection rule sets them,
# chunk by chunk.
TOPK_INPUTS = ("input_ids", "example_id", "doc_index", "topk_ids", "topk_logprobs", "target_logprob", "target_rank")

_OPTIONAL_INPUTS = ("tail_mass", LENGTH_ARRAY)
# A conversation store (``conversations``) also takes each example's real length and the (n, L-1)
# bool mask of its target positions (text/chat.py): rows elsewhere keep no entry.
CONVERSATION_INPUTS = (EXAMPLE_LENGTH, "target_mask")
# A store of teacher-written responses (``generation``) also takes each example's prompt id and
# finish reason code (schema.FINISH_REASONS).

# Attributes that may differ between the run that created a store and one that resumes or joins
# it: when and how long, and where things live (a worker on another machine may see the teacher,
# corpus or store under another path; their content is compared through the teacher, tokenizer
# and corpus fingerprints). Every other attribute must be equal, or the rows would not belong to
# one store. Dotted paths into nested dicts.
NOT_COMPARED = frozenset({
    "created_at", "complete", "precompute_seconds", "manifest", "integrity",
    "teacher.path", "corpus.source",
    "options.model", "options.dataset", "options.out", "options.tokenizer",
    "options.overwrite", "options.num_workers", "options.engine.gpu_memory_utilization",
})


# Arrays of small integer codes and table indices whose high bits are mostly zero: bit shuffle
# (with qdelta topk_logprobs: smaller than byte shuffle everywhere at k = 64 on SmolLM2, read as
# fast). Everything else, raw ids among them, compresses better byte-shuffled
# (docs/benchmarks.md, encoding search).
BITSHUFFLED = frozenset({"topk_index", "id_table", "topk_shift", LENGTH_ARRAY})
# qdelta topk_logprobs are stored slot-major within each chunk (Zarr's transpose codec, order
# (2, 0, 1): all rows' slot 0, then slot 1, …): each slot's delta codes have their own spread (the
# first is the top-1 code, the last ones are small), and grouped they compress smaller at k = 64
# on SmolLM2 (docs/benchmarks.md, encoding search).
# A ragged store (version 6) packs its kept entries in that order itself (packing.py): no transpose.
SLOT_MAJOR_ORDER = (2, 0, 1)
BLOSC_BLOCK = 1 << 20  # bytes per blosc block: smaller stores than blosc's own choice (docs/benchmarks.md, encoding search)


def _codecs(name: str, encoding: str, packed: bool = False) -> dict:
    """create_array's ``filters`` and ``compressors`` for array ``name`` (``packed``: a ragged
    store's chunks, already in slot-major order where the fixed store's transpose would put them)."""
    from zarr.codecs import BloscCodec, Crc32cCodec, TransposeCodec

    # Shuffle (blosc, typesize = the dtype's size) groups the high bytes (bits) of the values,
    # then zstd; then a crc32c checksum of the compressed bytes, so a flipped byte in any chunk is
    # caught. All three codecs (and transpose) are in the Zarr v3 specification.
    qdelta = name == "topk_logprobs" and encoding == "qdelta"
    bits = name in BITSHUFFLED or qdelta
    return {"filters": [TransposeCodec(order=SLOT_MAJOR_ORDER)] if qdelta and not packed else None,
            "compressors": [BloscCodec(cname="zstd", clevel=BLOSC_LEVEL, shuffle="bitshuffle" if bits else "shuffle",
                                       blocksize=BLOSC_BLOCK), Crc32cCodec()]}


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The first dotted path (outside NOT_COMPARED) where two JSON values differ, with both values."""
    if path in NOT_COMPARED:
        return None
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if old != new:
        return f"{path}: the store has {json.dumps(old)}, this run {json.dumps(new)}"
    return None


def _zarr_json(fs, root: str) -> dict | None:
    """The parsed zarr.json at ``root``; None when there is none; ValueError when it is not JSON."""
    try:
        raw = fs.cat_file(f"{root}/zarr.json")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("zarr.json is not a JSON object")
    return data


def check_store_target(url: str, overwrite: bool) -> None:
    """Refuse an ``--out`` that precompute-logits may not write, before any long work.

    Allowed: nothing there, an empty directory, or a kdstream store (zarr.json of format
    FORMAT_NAME: resumed, or replaced with ``overwrite`` unless a live run is writing it). A file,
    a model directory, another Zarr store or any other folder is refused whatever the flags:
    Zarr's ``mode="w"`` would delete it all.
    """
    from fsspec.core import url_to_fs

    from kdstream.storage.lock import _is_local, live_holders

    fs, root = url_to_fs(str(url))
    root = root.rstrip("/") or root
    if _is_local(fs):
        refuse_link(root, "--out")
    if fs.isfile(root):
        raise KdError(f"--out {url} is a file: pass a store path (a directory is created there)")
    for attempt in range(20):  # a zarr.json another worker is writing this instant (object store mid-PUT)
        try:
            meta = _zarr_json(fs, root)
            break
        except ValueError:
            if attempt == 19:
                raise KdError(f"--out {url} has a zarr.json that is not valid JSON: it is not a kdstream store "
                              "kdstream can resume or replace; choose another --out") from None
            time.sleep(0.1)
    if meta is None:
        if fs.isdir(root) and fs.ls(root, detail=False):
            raise KdError(f"--out {url} is a folder that is not a kdstream store (no zarr.json): choose another "
                          "--out (kdstream never replaces what it did not create)")
        return
    attributes = meta.get("attributes")
    if meta.get("node_type") != "group" or not isinstance(attributes, dict) or attributes.get("format") != FORMAT_NAME:
        raise KdError(f"--out {url} is a Zarr store but not a kdstream logit store: choose another --out "
                      "(kdstream never replaces what it did not create)")
    if overwrite:
        live = live_holders(url)
        if live:
            raise KdError(f"--overwrite would delete {url} while another precompute-logits writes it "
                          f"({live[0].describe()}): wait for it to finish, or stop it first")
        foreign = _foreign_entries(fs, root)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise KdError(f"--overwrite would delete {url}, which holds more than a kdstream store ({shown}): "
                          "move those away, or choose another --out (kdstream never replaces what it did not create)")


# What a store's folder may hold at its top level: its group's zarr.json, its arrays (any format
# version's) and groups, and a card `kdstream store card` wrote.
_STORE_NODES = frozenset({*V1_ARRAYS, *V2_ARRAYS, *V3_FP32, *V3_QDELTA, *SAMPLED_ARRAYS, LENGTH_ARRAY, EXAMPLE_LENGTH,
                          *GENERATION_ARRAYS, DONE_ARRAY, MANIFEST_ARRAY, tok_files.GROUP})


def _foreign_entries(fs, root: str) -> list[str]:
    """The names at the top of the store folder ``root`` that are not a part of a kdstream store."""
    from kdstream.storage.card import is_own_card

    foreign = []
    for entry in fs.ls(root, detail=True):
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        if name == "zarr.json" or (name in _STORE_NODES and entry.get("type") == "directory"):
            continue
        if name == "README.md" and entry.get("type") == "file":
            try:
                if is_own_card(fs.cat_file(entry["name"]).decode("utf-8", errors="replace")):
                    continue
            except OSError:
                pass
        foreign.append(name)
    return sorted(foreign)


class StoreWriter:
    """Write the store at ``url`` (a local path or an fsspec URL such as ``s3://…``).

    - No store there: create it, ``complete`` False in the very first metadata write.
    - An incomplete store started by the same command (attributes equal but NOT_COMPARED): open it
      and keep what was written; ``done_chunks()`` says which chunks to skip.
    - An incomplete store started otherwise: KdError naming the first difference.
    - A complete store: KdError unless ``overwrite``; ``overwrite`` always starts over.

    ``write_chunk(c, rows)`` writes chunk c whole (one region write per array: no read-modify-write)
    then its done marker. ``append(rows)`` is the sequential form: it buffers rows into chunks.

    ``tokenizer_files`` ({name: bytes}, tokenizer_files.collect): the teacher's tokenizer, recorded
    in the ``tokenizer`` attribute (``files``) and written as the ``tokenizer/`` group on opening.

    ``generation`` (with ``conversations``): the sampling of a store of teacher-written responses,
    recorded as the ``generation`` attribute; its chunks also take GENERATION_ARRAYS.

    ``claim``: called once the group exists and before anything is written into it
    (precompute-logits takes its share's WorkerLock there; its marks live inside the store).
    """

    def __init__(
        self,
        url: str,
        *,
        num_examples: int,
        seq_len: int,
        k: int,
        vocab_size: int,
        attrs: dict[str, Any],
        chunk_rows: int | None = None,
        overwrite: bool = False,
        encoding: str = enc.DEFAULT_ENCODING,
        samples: int | None = None,
        sample_seed: int = 0,
        selection: dict[str, Any] | None = None,
        tokenizer_files: dict[str, bytes] | None = None,
        conversations: dict[str, Any] | None = None,
        generation: dict[str, Any] | None = None,
        claim: Callable[[], None] | None = None,
    ) -> None:
        self.url = str(url)
        self.num_examples, self.seq_len, self.k, self.vocab_size = num_examples, seq_len, k, vocab_size
        self.encoding, self.selection, self.conversations = encoding, selection, conversations
        self.generation = generation  # --generate: sampling parameters; prompt_id and finish_reason arrays
        # sampled: each example draws from its own generator (encoding.draw_samples_by_example), so
        # a chunk's draws are the same whoever writes it, and whenever
        self.samples, self.sample_seed = samples, sample_seed
        # the teacher's tokenizer files (tokenizer_files.py), recorded in the tokenizer attribute
        self.tokenizer_files = dict(tokenizer_files or {})
        # the steps: the layout, the attributes, the group (created or resumed), its arrays, the
        # tokenizer files, then the integrity scan of the chunks an earlier run marked done
        self._plan(chunk_rows)
        self.attrs = self._attributes(attrs)
        self.group = self._open_or_create(overwrite)
        if claim is not None:  # the caller's lock, before any object is written: two runs never write the same one
            claim()
        self._arrays, self._done = self._open_arrays()
        tok_files.write_files(self.group, self.tokenizer_files)  # again on resume: a crash may have cut one short
        # chunks already written by an earlier or a parallel run, each checked (a damaged one is written again)
        self.resumed = self._intact(done_chunks(self.group))
        self._buffer: dict[str, list[np.ndarray]] = {n: [] for n in (*self.inputs, *_OPTIONAL_INPUTS)}
        self._buffered = 0
        self.rows_written = 0  # by append(), in order

    # -- layout ----------------------------------------------------------------------------

    def _plan(self, chunk_rows: int | None) -> None:
        """The store's layout: format version, arrays and their specs, rows per chunk, the inputs it takes."""
        encoding, selection, conversations, k = self.encoding, self.selection, self.conversations, self.k
        self.encoding_attrs = enc.encoding_attrs(encoding, self.samples)  # ValueError on an unknown name
        # ragged rows (selection.py): version 6 with topk_len, chunks packed (packing.py)
        if selection is not None and (encoding == "sampled" or selection.get("max_k") != k):
            raise ValueError(f"a selection needs top-k targets and max_k = k ({k}), got {selection} with {encoding}")
        if conversations is not None and encoding == "sampled":
            raise ValueError("a conversation store needs top-k targets (sampled rows are not packed by position)")
        ragged = self.ragged = selection is not None or conversations is not None
        version = self.version = (CONVERSATION_VERSION if conversations is not None else RAGGED_VERSION if ragged
                                  else FIXED_VERSION)
        chat = conversations is not None
        if self.generation is not None and not chat:
            raise ValueError("a generated store is a conversation store: pass conversations with generation")
        generated = self.generation is not None
        self.arrays = stored_arrays(version, "sampled" if encoding == "sampled" else "topk", encoding, ragged, chat,
                                    generated)
        # the teacher's values as produced, whatever the encoding (a sampled store draws them here)
        self.inputs = TOPK_INPUTS + (CONVERSATION_INPUTS if chat else ()) + (GENERATION_ARRAYS if generated else ())
        # A budget store's chunks hold ~budget entries per row, packed: size them by that, not by the
        # cap (bigger chunks: id tables spread over more entries, the budget shared more widely).
        sized_k = (min(k, int(np.ceil(selection["budget"]))) if selection is not None and selection["kind"] == "budget"
                   else k)
        self.chunk_rows = chunk_rows or default_chunk_rows(self.seq_len, sized_k, self.vocab_size, self.num_examples,
                                                           encoding)
        self.num_chunks = num_chunks(self.num_examples, self.chunk_rows)
        self.specs = array_specs(self.seq_len, k, self.vocab_size, encoding, version, ragged, chat, generated)

    def _attributes(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """The group attributes: the caller's, the tokenizer files' record, and the layout's."""
        if self.tokenizer_files:
            attrs = {**attrs, "tokenizer": {**(attrs.get("tokenizer") or {}),
                                            "files": tok_files.record(self.tokenizer_files)}}
        out = {
            **attrs,
            **({"selection": self.selection} if self.selection is not None else {}),
            **({"conversations": self.conversations} if self.conversations is not None else {}),
            **({"generation": self.generation} if self.generation is not None else {}),
            "format": FORMAT_NAME,
            "format_version": self.version,
            "num_examples": self.num_examples,
            "seq_len": self.seq_len,
            "k": self.k,
            "vocab_size": self.vocab_size,
            "chunk_rows": self.chunk_rows,
            "dtypes": {n: str(dt) for n, (_, dt) in self.specs.items()},
            "encoding": self.encoding_attrs,
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "complete": False,
        }
        return json.loads(json.dumps(out))  # as zarr.json gives them back (tuples → lists)

    def _open_arrays(self):
        """({name: array} of the stored arrays, the done markers), created where absent."""
        from zarr.codecs import Crc32cCodec

        arrays = {name: self._array(name, (self.num_chunks, *shape), (1, *shape), dtype, _codecs(name, self.encoding))
                  if name in PER_CHUNK else
                  self._array(name, (self.num_examples, *shape), (self.chunk_rows, *shape), dtype,
                              _codecs(name, self.encoding, self.ragged and name in packing.PACKED))
                  for name, (shape, dtype) in self.specs.items()}
        done = self._array(DONE_ARRAY, (self.num_chunks,), (1,), np.dtype(np.uint8), {"compressors": [Crc32cCodec()]})
        return arrays, done

    # -- opening ---------------------------------------------------------------------------

    def _open_or_create(self, overwrite: bool):
        import zarr
        from zarr.errors import ContainsGroupError, GroupNotFoundError

        check_store_target(self.url, overwrite)  # again: something may have appeared since the run began
        if overwrite:
            return zarr.open_group(self.url, mode="w", zarr_format=3, attributes=self.attrs)
        for _ in range(50):  # another writer may be creating the same store this very moment
            try:
                group = zarr.open_group(self.url, mode="r+")
            except (FileNotFoundError, GroupNotFoundError, KeyError):
                try:
                    return zarr.open_group(self.url, mode="w-", zarr_format=3, attributes=self.attrs)
                except (ContainsGroupError, FileExistsError):
                    time.sleep(0.1)
                    continue
            except ValueError:  # metadata half-written by another writer (an object store mid-PUT)
                time.sleep(0.1)
                continue
            existing = dict(group.attrs)
            if self.tokenizer_files and not tok_files.recorded(existing):
                # started by a kdstream that stored no tokenizer: it stays a store without one
                self.tokenizer_files = {}
                self.attrs["tokenizer"] = {k: v for k, v in self.attrs["tokenizer"].items() if k != "files"}
            self._check_resumable(existing)
            return group
        raise KdError(f"could not open or create the store at {self.url}: its zarr.json stays unreadable; "
                      "check the path, or choose another --out")

    def _check_resumable(self, existing: dict[str, Any]) -> None:
        if existing.get("format") != FORMAT_NAME:
            raise KdError(f"{self.url} exists and is not a kdstream store: choose another --out "
                          "(kdstream never replaces what it did not create)")
        if existing.get("complete"):
            raise KdError(f"a complete store already exists at {self.url}: pass --overwrite to replace it")
        diff = _first_difference(existing, self.attrs)
        if diff:
            raise KdError(f"the incomplete store at {self.url} was started with other settings ({diff}): "
                          "rerun with the same options to resume it, or pass --overwrite to start over")

    def _array(self, name: str, shape, chunks, dtype, codecs: dict):
        """The array, created unless present (never overwritten: another writer may be filling it).

        write_empty_chunks: an all-zero chunk gets a file too, so a missing file always means a
        chunk that was never written or was lost (verify.py relies on it)."""
        from zarr.errors import ContainsArrayError

        if name not in self.group:
            try:
                self.group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, **codecs,
                                        fill_value=0, overwrite=False)
            except ContainsArrayError:
                pass  # created by another writer in the meantime
        arr = self.group[name]
        if tuple(arr.shape) != tuple(shape) or tuple(arr.chunks) != tuple(chunks) or np.dtype(arr.dtype) != dtype:
            raise KdError(f"array {name} of the store at {self.url} has shape {arr.shape}, chunks {arr.chunks}, "
                          f"dtype {arr.dtype}, expected {shape}, {chunks}, {dtype}: pass --overwrite to start over")
        return arr.with_config({"write_empty_chunks": True})

    def _intact(self, marked: set[int]) -> set[int]:
        """The chunks of ``marked`` whose objects are all present, pass their crc32c and hold their
        size. The others (truncated, lost, damaged since) lose their done marker, so that they are
        written again (by this run, or by the rerun of the worker that owns them) and finalize never
        sees them as done: a resumed store cannot end complete but corrupt. Reads each marked
        chunk's objects once, without decompressing them."""
        from dataclasses import replace

        from zarr.core.sync import sync

        from kdstream.storage import chunk_io

        plans = {n: chunk_io.plan(a) for n, a in self._arrays.items()}
        plans = {n: replace(p, strict=True) for n, p in plans.items() if p is not None}
        bad = sorted({c for _, c, got in chunk_io.scan(plans, sorted(marked)) if isinstance(got, Exception)})
        store = self._done.store_path.store
        for c in bad:
            sync(store.delete(chunk_io.chunk_key(self._done, c)))
        return marked - set(bad)

    # -- resuming --------------------------------------------------------------------------

    def refresh_resumed(self) -> set[int]:
        """``resumed`` read again from the done markers: call it once this run holds its share of
        the store (storage/lock.py), as another run may have finished chunks since opening."""
        self.resumed = done_chunks(self.group)
        return self.resumed

    def rows_of(self, chunks: range) -> slice:
        """The example rows of consecutive ``chunks``."""
        return slice(chunks[0] * self.chunk_rows, min((chunks[-1] + 1) * self.chunk_rows, self.num_examples))

    # -- writing ---------------------------------------------------------------------------

    def _encode(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One chunk's teacher values as produced (float logprobs, raw ids) → its on-disk arrays."""
        rows = dict(rows)
        if self.encoding == "sampled":  # the stored draws, from the top-k + tail
            rows.update(enc.draw_samples_by_example(rows.pop("topk_ids"), rows.pop("topk_logprobs"), self.samples,
                                                    self.k, self.sample_seed, rows["example_id"]))
            return rows
        pad = lengths = kept = None
        targets = rows.pop("target_mask", None)  # conversations: (n, L-1) the rows that keep entries
        if self.ragged:  # keep each row's prefix, the rest is padding
            given = rows.pop(LENGTH_ARRAY, None)
            shape = np.shape(rows["topk_logprobs"])[:-1]
            lengths = (np.asarray(given, dtype=np.int64) if given is not None
                       else sel.lengths(rows["topk_logprobs"], self.selection) if self.selection is not None
                       else np.full(shape, self.k, dtype=np.int64))  # (n, L-1)
            if lengths.size and (lengths.min() < 1 or lengths.max() > self.k):
                raise ValueError(f"{LENGTH_ARRAY} must lie in 1..{self.k}, got {lengths.min()}..{lengths.max()}")
            pad = sel.pad_mask(lengths, self.k)  # (n, L-1, k)
            # what is stored: nothing of a row outside the targets (its codes are computed, then dropped)
            kept = lengths if targets is None else np.where(np.asarray(targets, dtype=bool), lengths, 0)
            # -inf: no mass (the tail is what the kept entries leave); fp32 stores keep the -inf
            rows["topk_logprobs"] = np.where(pad, -np.inf, np.asarray(rows["topk_logprobs"], dtype=np.float32))
            rows.pop("tail_mass", None)
            rows[LENGTH_ARRAY] = kept
        index, table = id_table.build(rows.pop("topk_ids"), self.vocab_size, self.specs["topk_index"][1],
                                      None if kept is None else sel.pad_mask(kept, self.k))
        rows["topk_index"], rows["id_table"] = index, table[None]  # (n, L-1, k), (1, V)
        if "tail_mass" not in rows:
            rows["tail_mass"] = enc.tail_mass(rows["topk_logprobs"])  # (n, L-1)
        if self.encoding == "qdelta":
            e = self.encoding_attrs
            deltas, shift = enc.encode_offset(rows["topk_logprobs"], rows.pop("tail_mass"), e["scale"])
            if pad is not None:
                deltas = enc.pad_deltas(deltas, pad)  # padding repeats the row's last code
            cum = enc.cumulative_codes(deltas)  # (n, L-1, k) absolute codes, as the reader computes them
            rows["topk_logprobs"], rows["topk_shift"] = deltas, shift  # (n, L-1, k) uint16, (n, L-1) int16
            rows["target_code"] = enc.encode_target(rows.pop("target_logprob"), cum, rows["target_rank"],
                                                    e["target_scale"], lengths)
        if targets is not None:  # a row that is no target stores nothing but zeros
            off = ~np.asarray(targets, dtype=bool)
            for name in ("topk_shift", "target_code", "target_rank", "tail_mass", "target_logprob"):
                if name in rows:
                    rows[name] = np.where(off, 0, rows[name]).astype(np.asarray(rows[name]).dtype)
        if kept is not None:  # the chunk's kept entries back to back, then zeros (packing.py)
            for name in packing.PACKED:
                rows[name] = packing.pack(np.asarray(rows[name]), kept, packing.slot_major(name, self.encoding))
        return rows

    def write_chunk(self, c: int, rows: dict[str, np.ndarray]) -> None:
        """Write chunk c (all its rows of every key of ``self.inputs``; logprobs as float and ids
        raw, encoded here), then mark it done: a crash in between leaves the chunk unmarked, so it
        is written again on resume."""
        if not 0 <= c < self.num_chunks:
            raise ValueError(f"chunk {c} outside 0..{self.num_chunks - 1}")
        where = chunk_slice(c, self.chunk_rows, self.num_examples)
        n = where.stop - where.start
        missing = [key for key in self.inputs if key not in rows]
        if missing:
            raise ValueError(f"chunk {c} lacks {', '.join(missing)}")
        for key in self.inputs:
            if len(rows[key]) != n:
                raise ValueError(f"{key}: chunk {c} needs {n} rows, got {len(rows[key])}")
        rows = self._encode(rows)
        encoded = {}
        for name in self.arrays:
            arr = np.asarray(rows[name])
            shape, dtype = self.specs[name]
            lead = 1 if name in PER_CHUNK else n
            if arr.shape != (lead, *shape):
                raise ValueError(f"{name}: chunk {c} needs shape {(lead, *shape)}, got {arr.shape}")
            encoded[name] = arr.astype(dtype, copy=False)
        for name, arr in encoded.items():
            self._arrays[name][slice(c, c + 1) if name in PER_CHUNK else where] = arr
        self._done[c : c + 1] = np.ones(1, np.uint8)

    def write_chunks(self, chunks: range, rows: dict[str, np.ndarray]) -> None:
        """Write each chunk of ``chunks`` not resumed from ``rows``, the rows ``rows_of(chunks)``."""
        base = self.rows_of(chunks).start
        for c in chunks:
            if c not in self.resumed:
                self.write_chunk(c, {key: v[c * self.chunk_rows - base : (c + 1) * self.chunk_rows - base]
                                     for key, v in rows.items()})

    def append(self, rows: dict[str, np.ndarray]) -> None:
        """Add the next rows in order (any batch size): whole chunks are written as they fill."""
        n = len(rows["input_ids"])
        for name in self._buffer:
            if name in rows or name not in _OPTIONAL_INPUTS:
                self._buffer[name].append(np.asarray(rows[name]))
        self._buffered += n
        if self.rows_written + self._buffered > self.num_examples:
            raise ValueError("more rows appended than the store was created for")
        while self._buffered >= self.chunk_rows or (self._buffered and self.rows_written + self._buffered == self.num_examples):
            count = min(self.chunk_rows, self._buffered)
            chunk = {}
            for name, parts in self._buffer.items():
                if not parts:
                    continue
                joined = np.concatenate(parts)
                chunk[name] = joined[:count]
                self._buffer[name] = [joined[count:]]
            self.write_chunk(self.rows_written // self.chunk_rows, chunk)
            self._buffered -= count
            self.rows_written += count

    def finalize(self, extra_attrs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check every chunk is written and each example present once, then set ``complete``."""
        from kdstream.storage.finalize import finalize_store

        return finalize_store(self.url, extra_attrs)
