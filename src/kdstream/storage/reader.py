"""Read a logit store from a path or fsspec URL: random access and slices, decoded to numpy."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from kdstream.errors import KdError
from kdstream.storage import chunk_io, id_table, integrity, packing, shapes, targets
from kdstream.storage import encoding as enc
from kdstream.storage.chunks import DONE_ARRAY, chunk_slice
from kdstream.storage.schema import (
    EXAMPLE_LENGTH,
    FORMAT_NAME,
    FORMAT_VERSION,
    GENERATION_ARRAYS,
    LENGTH_ARRAY,
    PER_CHUNK,
    arrays_of,
    is_conversations,
    is_generated,
    is_packed,
    is_ragged,
)
from kdstream.storage.selection import pad_mask

# What ``store[i]`` / ``store[a:b]`` / ``read`` return (the decoded view, whatever the version).
KEYS = ("input_ids", "example_id", "doc_index", "topk_ids", "topk_logprobs", "tail_mass", "target_logprob",
        "target_rank")
_SAMPLED_VIEW = ("topk_ids", "topk_logprobs", "tail_mass")  # what a sampled store presents as top-k

# Decoded dtypes handed to users, whatever the on-disk encoding.
_DECODED = {
    "input_ids": np.int64,
    "example_id": np.int64,
    "doc_index": np.int64,
    "topk_ids": np.int64,
    "topk_logprobs": np.float32,
    "tail_mass": np.float32,
    "target_logprob": np.float32,
    "target_rank": np.int64,
    "sample_ids": np.int64,
    "sample_counts": np.int64,
    "sample_tail_count": np.int64,
    LENGTH_ARRAY: np.int64,
    EXAMPLE_LENGTH: np.int64,
    "positions": np.int64,
    "prompt_id": np.int64,
    "finish_reason": np.int64,
}
# A conversation store's ``store[i]``: the example trimmed to its tokens and its target positions.
AT_POSITIONS = ("topk_ids", "topk_logprobs", "tail_mass", "target_logprob", "target_rank")
# Read from a ragged store's topk_len, besides what the key's own arrays give: the padding to mask.
_MASKED = ("topk_ids", "topk_logprobs", "tail_mass", "target_logprob")


class LogitStore:
    """``store[i]`` → dict of arrays for example i; ``store[a:b]`` → same keys, leading batch axis.

    Keys: input_ids (L,), topk_ids (L-1, k), topk_logprobs (L-1, k) (natural log, T = 1),
    tail_mass (L-1,), target_logprob (L-1,), target_rank (L-1,), example_id (), doc_index ().
    Row t of the teacher arrays is the distribution that predicts input_ids[t+1]. Logprobs come
    back decoded to float32 whatever the on-disk encoding (``attrs["encoding"]``); each is within
    ``attrs["encoding"]["max_abs_error"]`` nats of the teacher's value.

    A ragged store (``attrs["selection"]``, format version 6, or 5) keeps a prefix of each row: its
    rows come back padded to k all the same, with logprob -inf and id 0 at the unused slots
    (the losses read -inf as "not listed"), and ``read(..., keys=("topk_len",))`` gives each
    row's entries in use (k everywhere for a fixed store). Version 6 stores each chunk's kept
    entries back to back (packing.py): a read unpacks whole chunks, so one that starts or stops
    inside a chunk decodes that whole chunk.

    Every chunk a read needs must exist (``strict``: stores with chunk_done markers) and, with a
    manifest (format version 4), match it: otherwise a one-line KdError naming the array, chunk,
    rows and file. ``identity`` names the finalized store (integrity.py); None before version 4.
    """

    def __init__(self, group, url: str, *, strict: bool = False,
                 manifest: dict[str, np.ndarray] | None = None, identity: str | None = None) -> None:
        self.group = group
        self.url = url
        self.identity = identity
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.format_version = int(self.attrs.get("format_version", 1))
        # Version 1 stores: fp32 logprobs, no tail_mass array (computed from the top-k on read).
        self.encoding: dict[str, Any] = self.attrs.get("encoding") or enc.encoding_attrs("fp32")
        self.sampled = self.encoding["topk_logprobs"] == "sampled"
        self.qdelta = self.encoding["topk_logprobs"] == "qdelta"
        self.ragged = is_ragged(self.attrs)
        self.conversations = is_conversations(self.attrs)  # version 7: one example per conversation
        self.generated = is_generated(self.attrs)  # teacher-written responses: prompt_id, finish_reason
        self.packed = is_packed(self.attrs)  # version 6: chunks of kept entries back to back
        self._arrays = {name: group[name] for name in arrays_of(self.attrs)}
        shapes.check_data(url, self.attrs, self._arrays)  # before any read: the attributes bound its cost
        self.strict = strict
        plans = {name: chunk_io.plan(arr) for name, arr in self._arrays.items()}  # None: read via zarr
        if manifest is not None:
            self._check_layout(plans, manifest)
        self._plans = {name: p if p is None else replace(p, strict=strict, expected=(manifest or {}).get(name))
                       for name, p in plans.items()}
        # a fixed qdelta store's codes stored slot-major: summed in chunk_io, before the transpose back
        codes = self._plans.get("topk_logprobs")
        self._codes_summed = (self.qdelta and "topk_shift" in self._arrays and not self.packed and codes is not None
                              and codes.order is not None and codes.order[0] == len(codes.row_shape))
        if self._codes_summed:
            self._plans["topk_logprobs"] = replace(codes, running_sum=True)

    def _check_layout(self, plans: dict[str, chunk_io.Plan | None], manifest: dict[str, np.ndarray]) -> None:
        """Each array's metadata must be what the store was finalized with (``manifest.layout``)."""
        layouts = (self.attrs.get("manifest") or {}).get("layout") or {}
        for name, p in plans.items():
            if p is None or name not in manifest or integrity.layout(p) != layouts.get(name):
                raise KdError(f"store {self.url}: the metadata of array {name} ({name}/zarr.json) is not what the "
                              "store was finalized with (edited or damaged): re-copy or regenerate the store")

    def __len__(self) -> int:
        return int(self.attrs["num_examples"])

    @property
    def seq_len(self) -> int:
        return int(self.attrs["seq_len"])

    @property
    def keys(self) -> tuple[str, ...]:
        """What ``store[a:b]`` gives: KEYS, and for a conversation store each example's ``length``
        and each row's ``topk_len`` (0 where the row is no target position); for a generated store
        also ``prompt_id`` and ``finish_reason`` (an index into ``attrs["generation"]["finish_reasons"]``)."""
        return (KEYS + ((EXAMPLE_LENGTH, LENGTH_ARRAY) if self.conversations else ())
                + (GENERATION_ARRAYS if self.generated else ()))

    @property
    def k(self) -> int:
        return int(self.attrs["k"])

    @property
    def vocab_size(self) -> int:
        return int(self.attrs["vocab_size"])

    @property
    def chunk_rows(self) -> int:
        return int(self.attrs["chunk_rows"])

    def _sources(self, key: str) -> tuple[str, ...]:
        """The stored arrays that decoded ``key`` is computed from."""
        if key == LENGTH_ARRAY:
            return (LENGTH_ARRAY,) if self.ragged else ()
        if self.ragged and key in _MASKED:
            return self._stored_sources(key) + (LENGTH_ARRAY,)
        return self._stored_sources(key)

    def _stored_sources(self, key: str) -> tuple[str, ...]:
        stored = self._arrays
        if key == "topk_ids" and "topk_index" in stored:  # version 3: indices into the chunk's table
            return ("topk_index", "id_table")
        if self.qdelta and key in ("topk_logprobs", "tail_mass"):
            return ("topk_logprobs", "topk_shift") if "topk_shift" in stored else ("topk_logprobs", "tail_mass")
        if key == "target_logprob" and "target_code" in stored:
            return ("target_code", "topk_logprobs", "target_rank")
        if key == "tail_mass" and "tail_mass" not in stored:
            return ("topk_logprobs",)  # a version 1 store: tail computed from the fp32 top-k
        return (key,)

    def read(self, start: int, stop: int, keys: tuple[str, ...] = KEYS) -> dict[str, np.ndarray]:
        """Rows [start, stop) of the named arrays: every stored array needed is read with one
        contiguous slice (whole chunks when start and stop are chunk bounds), all concurrently."""
        if self.sampled and set(_SAMPLED_VIEW) & set(keys):
            return self._read_sampled(start, stop, keys)
        names = tuple(dict.fromkeys(n for key in keys for n in self._sources(key)))
        packed = self.packed and bool(set(packing.PACKED) & set(names)) and stop > start
        if packed:  # packed rows need their chunks' lengths from the chunk start: fetch whole chunks,
            R = self.chunk_rows  # unpack only rows [start, stop) of them (packing.unpack_rows)
            a, b = start // R * R, min(-(-stop // R) * R, len(self))
            raw = self._fetch(names, a, b, self._transient(keys))
        else:
            raw = self._fetch(names, start, stop, self._transient(keys))
        self._check_ids(raw, start, stop)
        out: dict[str, np.ndarray] = {}
        summed = self._codes_summed  # raw topk_logprobs holds absolute codes, not deltas
        if packed:
            lo, hi = start - a, stop - a
            if "topk_ids" in keys:  # straight to ids: only the entries in use are looked up
                try:
                    out["topk_ids"] = packing.unpack_ids(raw.pop("topk_index"), raw[LENGTH_ARRAY], raw["id_table"],
                                                         self.chunk_rows, lo, hi)
                except IndexError:  # numpy's bounds check of the gather
                    raise self._ids_out_of_table(start, stop) from None
            summed = self._unpack(raw, lo, hi)
            for name in raw:  # the other per-row arrays: the rows asked for (packed ones already are)
                if name not in packing.PACKED and name not in PER_CHUNK:
                    raw[name] = raw[name][lo:hi]
        # (B, L-1, k) True at a ragged row's padding slots; None for a fixed store
        pad = pad_mask(raw[LENGTH_ARRAY], self.k) if LENGTH_ARRAY in raw and set(_MASKED[:3]) & set(keys) else None
        if LENGTH_ARRAY in keys and not self.ragged:
            out[LENGTH_ARRAY] = np.full((stop - start, self.seq_len - 1), self.k, dtype=np.int64)
        if "topk_ids" in keys and "topk_index" in raw and "topk_ids" not in out:
            R = self.chunk_rows
            rows = np.arange(start, stop) // R - start // R  # (B,) which of the tables read each row uses
            try:
                out["topk_ids"] = id_table.lookup(raw["topk_index"], raw["id_table"], rows)  # (B, L-1, k) int64
            except IndexError:  # numpy's bounds check of the gather
                raise self._ids_out_of_table(start, stop) from None
            if pad is not None:
                np.copyto(out["topk_ids"], 0, where=pad)
        if self.qdelta and {"topk_logprobs", "tail_mass", "target_logprob"} & set(keys):
            self._decode_qdelta(raw, keys, out, pad, summed)
        if "tail_mass" in keys and "tail_mass" not in out:
            out["tail_mass"] = raw["tail_mass"] if "tail_mass" in raw else enc.tail_mass(raw["topk_logprobs"])
        for key in keys:
            if key not in out:
                out[key] = raw[key]
        return {key: out[key].astype(_DECODED[key], copy=False) for key in keys}

    def read_targets(self, start: int, stop: int, keys: tuple[str, ...] = AT_POSITIONS) -> dict[str, np.ndarray]:
        """The target rows of examples [start, stop) and nothing else, flat: ``example`` and
        ``position`` (N,) name each (row t of example i predicts input_ids[t+1]), ``topk_len``
        (N,) its entries in use, and each key at those rows, (N, k) or (N,), decoded as ``read``
        decodes them. A target row is one holding entries: a conversation store's assistant
        positions, every row of a window store. A packed store's other rows are never unpacked."""
        if not self.packed or self.sampled or (self.qdelta and "topk_shift" not in self._arrays):
            got = self.read(start, stop, tuple(dict.fromkeys(keys + (LENGTH_ARRAY,))))
            ex, pos = np.nonzero(got[LENGTH_ARRAY])
            out = {"example": ex + start, "position": pos, LENGTH_ARRAY: got[LENGTH_ARRAY][ex, pos]}
            out.update({key: got[key][ex] if got[key].ndim == 1 else got[key][ex, pos] for key in keys})
            return {name: v.astype(_DECODED.get(name, np.int64), copy=False) for name, v in out.items()}
        names = tuple(dict.fromkeys([*(n for key in keys for n in self._sources(key)), LENGTH_ARRAY]))
        R = self.chunk_rows
        a, b = start // R * R, min(-(-stop // R) * R, len(self))
        raw = self._fetch(names, a, b, self._transient(keys))
        self._check_ids(raw, a, b)
        try:
            rows = targets.compact(raw, R, self.k, a, start, stop, self.encoding["topk_logprobs"], True)
        except IndexError:  # numpy's bounds check of the id-table gather
            raise self._ids_out_of_table(start, stop) from None
        if not rows:
            return {name: np.zeros((0, self.k) if name in ("topk_ids", "topk_logprobs") else (0,),
                                   _DECODED.get(name, np.int64)) for name in ("example", "position", LENGTH_ARRAY, *keys)}
        out = {name: rows[name] for name in ("example", "position", LENGTH_ARRAY)}
        if "topk_ids" in keys:
            out["topk_ids"] = rows.pop("topk_ids")
        if self.qdelta:  # the codes came back summed (targets.compact): decode as a read of N rows
            self._decode_qdelta(rows, keys, out, pad_mask(rows[LENGTH_ARRAY], self.k), summed=True)
        if "tail_mass" in keys and "tail_mass" not in out:
            out["tail_mass"] = rows["tail_mass"] if "tail_mass" in rows else enc.tail_mass(rows["topk_logprobs"])
        for key in keys:
            if key not in out:
                out[key] = rows[key]
        return {name: v.astype(_DECODED.get(name, np.int64), copy=False) for name, v in out.items()}

    def _check_ids(self, raw: dict[str, np.ndarray], start: int, stop: int) -> None:
        """Token ids (and top-k indices into the V-entry id tables) must lie in [0, vocab_size): a
        store forged with its checksums recomputed passes every crc32c, and an id past the
        vocabulary would index past a model's embedding. One min / max pass over the id arrays (the
        top-k indices are bounded by the table lookup itself, ``_ids_out_of_table``)."""
        for name in id_table.ID_ARRAYS:
            bad = id_table.outside(raw[name], self.vocab_size) if name in raw else None
            if bad is not None:
                raise KdError(f"store {self.url}: {name} (rows {start}:{stop}) holds token id {bad}, outside 0.."
                              f"{self.vocab_size - 1} (its vocab_size {self.vocab_size}): the store is damaged or "
                              "forged; regenerate it")

    def _ids_out_of_table(self, start: int, stop: int) -> KdError:
        return KdError(f"store {self.url}: topk_index (rows {start}:{stop}) holds an index past its chunk's id table "
                       f"of {self.vocab_size} ids: the store is damaged or forged; regenerate it")

    def _transient(self, keys: tuple[str, ...]) -> frozenset[str]:
        """The stored arrays ``read`` decodes into others before it returns (never returned as
        stored): top-k indices (→ ids) and qdelta codes (→ logprobs), read into scratch memory."""
        out = {"topk_index"} if "topk_index" in self._arrays and "topk_index" not in keys else set()
        if self.qdelta:  # "topk_logprobs" in keys names the decoded logprobs: the stored codes never leave
            out.add("topk_logprobs")
        return frozenset(out)

    def _unpack(self, raw: dict[str, np.ndarray], lo: int, hi: int) -> bool:
        """Whole chunks of a version 6 store's packed arrays → their rows [lo, hi) padded to k (the
        version 5 layout: index 0 and delta code 0 at the padding, fp32 logprob -inf), in place.
        qdelta codes come back as absolute codes (summed while slot-major, packing.unpack): True
        when they did, for ``_decode_qdelta``."""
        logprobs = self.encoding["topk_logprobs"]
        summed = False
        for name in packing.PACKED:
            if name in raw:
                fill = -np.inf if raw[name].dtype.kind == "f" else 0
                by_slot = packing.slot_major(name, logprobs)
                cumulative = by_slot and "topk_shift" in self._arrays
                raw[name] = packing.unpack_chunks(raw[name], raw[LENGTH_ARRAY], self.chunk_rows,
                                                  by_slot, fill, lo, hi, cumulative)
                summed = summed or cumulative
        return summed

    def _decode_qdelta(self, raw: dict[str, np.ndarray], keys: tuple[str, ...], out: dict[str, np.ndarray],
                       pad: np.ndarray | None = None, summed: bool = False) -> None:
        e = self.encoding
        if "topk_shift" not in self._arrays:  # version 2: a float32 tail, renormalised on read
            if "topk_logprobs" in keys:
                out["topk_logprobs"] = enc.decode_topk(raw["topk_logprobs"], raw["tail_mass"], e["scale"])
            return
        # (B, L-1, k) uint16 absolute codes
        cum = raw["topk_logprobs"] if summed else enc.cumulative_codes(raw["topk_logprobs"])
        if "target_logprob" in keys:
            out["target_logprob"] = enc.decode_target(raw["target_code"], cum, raw["target_rank"], e["target_scale"],
                                                      raw.get(LENGTH_ARRAY))
        if "topk_logprobs" in keys or "tail_mass" in keys:
            lp = enc.decode_shifted(cum, raw["topk_shift"], e["scale"], e["shift_scale"])  # (B, L-1, k)
            if pad is not None:  # the padding repeats the row's last code: no entry, no mass
                np.copyto(lp, -np.inf, where=pad)
            if "topk_logprobs" in keys:
                out["topk_logprobs"] = lp
            if "tail_mass" in keys:
                out["tail_mass"] = enc.decoded_tail(lp)  # (B, L-1): what the decoded top-k leaves

    def _read_sampled(self, start: int, stop: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """A sampled store seen as top-k: the drawn ids, log(count / N), tail = tail draws / N."""
        other = tuple(k for k in keys if k not in _SAMPLED_VIEW)
        raw = self.read(start, stop, tuple(dict.fromkeys(other + ("sample_ids", "sample_counts", "sample_tail_count"))))
        ids, logprobs, tail = enc.decode_samples(raw["sample_ids"], raw["sample_counts"], raw["sample_tail_count"],
                                                 int(self.encoding["samples"]))
        raw.update(topk_ids=ids, topk_logprobs=logprobs, tail_mass=tail)
        return {name: raw[name].astype(_DECODED[name], copy=False) for name in keys}

    def _fetch(self, names: tuple[str, ...], start: int, stop: int,
               transient: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
        """Rows [start, stop) of stored arrays (for PER_CHUNK ones: the rows of the chunks holding
        them), as stored, all read concurrently: whole chunk objects fetched together and
        decompressed straight into their output (chunk_io), or through zarr for arrays of other
        layouts. A failed checksum is a one-line KdError naming the array. ``transient``: arrays
        the caller decodes before its next read (chunk_io.assemble)."""
        import asyncio

        from zarr.core.sync import sync

        for name in names:
            if name not in self._arrays:
                raise KeyError(f"store {self.url} has no array {name!r}")
        direct = {n: self._plans[n] for n in names if self._plans[n] is not None}
        others = [n for n in names if n not in direct]
        R = self.chunk_rows
        chunks = slice(start // R, -(-stop // R)) if stop > start else slice(0, 0)

        async def get_all():
            via_zarr = asyncio.gather(*(self._arrays[n]._async_array.getitem(chunks if n in PER_CHUNK else
                                                                             slice(start, stop)) for n in others),
                                      return_exceptions=True)
            return await asyncio.gather(chunk_io.fetch(direct, start, stop, frozenset(PER_CHUNK), R), via_zarr,
                                        self._absent(others, range(chunks.start, chunks.stop)))

        fetched = None if others else chunk_io.fetch_local(direct, start, stop, frozenset(PER_CHUNK), R)
        if fetched is None:
            fetched, got_zarr, absent = sync(get_all())
        else:
            got_zarr, absent = [], {}
        got = chunk_io.assemble(direct, fetched, start, stop, frozenset(PER_CHUNK), R, transient)
        got.update(zip(others, got_zarr))
        got.update(absent)
        out = {}
        for name in names:
            if isinstance(got[name], BaseException):
                self._raise(name, start, stop, got[name])
            out[name] = np.asarray(got[name])
        return out

    async def _absent(self, names: list[str], chunks: range) -> dict[str, BaseException]:
        """For arrays read through zarr (which reads a missing object as the fill value): a
        MissingChunk for each whose object of one of ``chunks`` is absent, in a strict store."""
        import asyncio

        if not self.strict or not names:
            return {}
        jobs = [(n, c) for n in names for c in chunks]
        found = await asyncio.gather(*(self._arrays[n].store_path.store.exists(chunk_io.chunk_key(self._arrays[n], c))
                                       for n, c in jobs))
        out: dict[str, BaseException] = {}
        for (n, c), there in zip(jobs, found):
            if not there and n not in out:
                out[n] = chunk_io.MissingChunk(f"chunk object {chunk_io.chunk_key(self._arrays[n], c)} is missing")
                out[n].chunk = c
        return out

    def _raise(self, name: str, start: int, stop: int, exc: BaseException) -> None:
        c = getattr(exc, "chunk", None)
        if c is None:
            where = f"{name} rows {start}:{stop}"
        else:
            rows = chunk_slice(c, self.chunk_rows, len(self))
            key = chunk_io.chunk_key(self._arrays[name], c)
            where = f"{name} chunk {c} (rows {rows.start}:{rows.stop}, file {key})"
        if isinstance(exc, chunk_io.MissingChunk):
            raise KdError(f"store {self.url}: {where} is missing (lost, or the store is being rewritten): "
                          "re-copy or regenerate the store") from None
        if isinstance(exc, chunk_io.ChangedChunk):
            raise KdError(f"store {self.url} changed since it was finalized or opened: {where} differs from its "
                          f"manifest ({exc}; rewritten or replaced): reopen it once its writer has finished, or "
                          "re-copy or regenerate it") from None
        if isinstance(exc, (ValueError, RuntimeError)) and (
                "checksum" in str(exc).lower() or "decompress" in str(exc).lower()):
            raise KdError(f"store {self.url}: corrupt chunk in {where} ({exc}): "
                          "re-copy or regenerate the store") from None
        raise exc

    def __getitem__(self, index: int | slice) -> dict[str, np.ndarray]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("store slices must have step 1 (read contiguous rows, then subsample)")
            return self.read(start, stop, self.keys)
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"example {index} out of range for a store of {len(self)}")
        row = {k: v[0] for k, v in self.read(i, i + 1, self.keys).items()}
        return self._trimmed(row) if self.conversations else row

    @staticmethod
    def _trimmed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A conversation example as its ``length`` tokens and ``positions`` (n,), the rows t whose
        next token input_ids[t+1] the loss is on, with the teacher arrays at those rows only."""
        n = int(row.pop(EXAMPLE_LENGTH))
        positions = np.flatnonzero(row.pop(LENGTH_ARRAY)[: n - 1] > 0)
        out = {k: v for k, v in row.items() if k not in AT_POSITIONS}
        out["input_ids"] = row["input_ids"][:n]
        out["positions"] = positions.astype(np.int64)
        out.update({k: row[k][positions] for k in AT_POSITIONS})
        return out


def open_store(url: str, require_complete: bool = True, identity: str | None = None) -> LogitStore:
    """Open a store written by ``precompute-logits`` (a local path or an fsspec URL).

    A complete store of format version >= 4 must match its integrity record (attributes and
    manifest checksums, integrity.py), read once here. ``identity``: the store must be that one
    (a reader reopening a store it started with, e.g. in a DataLoader worker); KdError otherwise."""
    import zarr

    url = str(url)
    try:
        group = zarr.open_group(url, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        raise KdError(f"no logit store at {url}: run precompute-logits first or check the path") from None
    attrs = dict(group.attrs)
    if attrs.get("format") != FORMAT_NAME:
        raise KdError(f"{url} is a Zarr group but not a kdstream logit store: point --logits-store at one")
    version = integrity.claimed_version(group, url, attrs)  # not older than the fields it carries
    if version > FORMAT_VERSION:
        raise KdError(
            f"store {url} has format version {version}, newer than this kdstream reads ({FORMAT_VERSION}): "
            "upgrade kdstream"
        )
    if require_complete and not attrs.get("complete"):
        raise KdError(
            f"store {url} is incomplete (its precompute did not finish): rerun precompute-logits with the same options"
        )
    manifest, ident = None, None
    if version >= integrity.INTEGRITY_VERSION and attrs.get("complete"):
        manifest, ident = integrity.load_manifest(group, url, attrs)
    missing = [n for n in arrays_of(attrs) if n not in group]
    if missing:
        raise KdError(f"store {url} is missing arrays {', '.join(missing)}: it is corrupt; regenerate it")
    if identity is not None and ident != identity:
        raise KdError(f"store {url} is not the store this run started with (identity {ident}, expected {identity}): "
                      "it was rewritten or replaced; rerun against the store as it is now, or restore the old one")
    # chunk_done markers: written with write_empty_chunks, so a missing chunk object is always a loss
    strict = version >= integrity.INTEGRITY_VERSION or DONE_ARRAY in group
    return LogitStore(group, url, strict=strict, manifest=manifest, identity=ident)


def disk_bytes(url: str) -> int:
    """Bytes the store occupies (every array and metadata file), local or remote."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(url))
    return int(fs.du(path, total=True))
