"""Several logit stores from one teacher and tokenizer, read as one store, without copying.

``open_stores("a.zarr,b.zarr")`` (or a list of URLs) opens each part with ``open_store`` and
returns a ``StoreUnion``: the rows of part 0, then those of part 1, …, behind the interface every
reader of a ``LogitStore`` uses (``len``, ``read``, ``store[i]``, ``store[a:b]``, ``attrs``,
``seq_len``, ``k``, ``vocab_size``, ``chunk_rows``, ``sampled``, ``encoding``, ``url``,
``identity``). One URL gives exactly ``open_store(url)``.

The parts must hold the same kind of rows: the same teacher (weights and config fingerprints,
and directory name), tokenizer, vocabulary, example length, targets, k, logprob encoding (the
``encoding`` attribute as a whole: qdelta and fp32 rows differ in precision), teacher dtype,
logprob mode and, for ragged stores, the row-length rule (``selection``: a budgeted store's rows
differ in kind from a fixed top-k store's). A difference, or one store listed twice (same identity or same resolved URL), is
a one-line KdError naming both URLs and the field.

Example ids: a part's ids are positions in the packing of its own corpus, so parts usually all
start at 0. In the union, part j's ids are shifted by offset_j = sum over the parts i < j of
(largest example id of part i + 1), read once at open from each part's ``example_id`` array.
Part 0 keeps its ids; an ``--exclude`` list for a union names union ids. ``doc_index`` is each
part's own (not shifted).

Identity: sha256 over the parts' identities in order (None when a part has none: format < 4),
so a union names its parts and their order, and differs from each part's.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from kdstream.errors import KdError
from kdstream.storage.reader import AT_POSITIONS, KEYS, LogitStore, open_store

# What the parts must agree on: dotted paths into the group attributes. The teacher by its
# fingerprint, weights first (the difference a refusal should name), then its directory's name
# (as the writer's resume check does; not its machine-local path).
MUST_MATCH = (
    "teacher.weights_fingerprint", "teacher.config_sha256", "teacher.name",
    "tokenizer.sha256", "vocab_size", "seq_len", "targets", "k", "source_top_k",
    "encoding",  # as a whole: qdelta and fp32 logprobs differ in precision, old and new qdelta in scale
    "engine.dtype", "engine.logprobs_mode",
    "temperature",  # the stored distribution's, where a store records one
    "selection",  # ragged stores' per-row rule (top-p / budget): one union, one kind of row
)


# Commas separate the stores of ``--logits-store``; a comma that is part of a path is written ``\,``.
_SEPARATOR = re.compile(r"(?<!\\),")
_HOW = "commas separate stores; write a comma that is part of a path as \\,"


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """The store URLs of ``--logits-store``: a comma-separated string (``\\,`` a comma inside a
    path) or a list, blanks dropped."""
    items = [u.replace("\\,", ",") for u in _SEPARATOR.split(urls)] if isinstance(urls, str) else [str(u) for u in urls]
    return [u.strip() for u in items if u.strip()]


def several_stores(urls: str) -> bool:
    """Whether the ``--logits-store`` string ``urls`` names more than one store."""
    return len(split_urls(str(urls))) > 1


def join_urls(urls: Sequence[str]) -> str:
    """The ``--logits-store`` string that ``split_urls`` reads back as ``urls``."""
    return ",".join(str(u).replace(",", "\\,") for u in urls)


def store_spec(store) -> str:
    """The ``--logits-store`` string that opens ``store`` (a LogitStore or a StoreUnion) again."""
    return join_urls([p.url for p in getattr(store, "parts", [store])])


def open_stores(urls: str | Sequence[str], identity: str | None = None,
                part_identities: Sequence[str | None] | None = None) -> LogitStore | StoreUnion:
    """One store (``open_store``) or several read as one (``StoreUnion``), checked to match.

    ``identity``: the result must be that store or union (a reader reopening what it started
    with, e.g. in a DataLoader worker); ``part_identities``: each part's, so that a changed part
    is named (``StoreUnion.part_identities`` of the union first opened)."""
    if isinstance(urls, str) and "," not in urls:
        return open_store(urls, identity=identity)  # the one-store path, unchanged
    parts = split_urls(urls)
    if not parts:
        raise KdError(f"--logits-store {urls!r} names no store: pass a path or URL (several: comma-separated)")
    if len(parts) == 1:
        return open_store(parts[0], identity=identity)
    _refuse_repeated_urls(parts)
    wanted = list(part_identities) if part_identities is not None else [None] * len(parts)
    if len(wanted) != len(parts):
        raise KdError(f"stores {join_urls(parts)}: {len(wanted)} part identities for {len(parts)} stores "
                      "(the union was opened with other parts): reopen it with the same --logits-store")
    union = StoreUnion([_open_part(u, i, urls) for u, i in zip(parts, wanted)])
    if identity is not None and union.identity != identity:
        raise KdError(f"stores {union.url} are not the stores this run started with (identity {union.identity}, "
                      f"expected {identity}): one was rewritten or replaced; rerun against the stores as they are "
                      "now, or restore the old ones")
    return union


def _open_part(url: str, identity: str | None, urls) -> LogitStore:
    """``open_store(url)``; a missing store says how ``urls`` was split (a comma in a path?)."""
    try:
        return open_store(url, identity=identity)
    except KdError as exc:
        if not str(exc).startswith("no logit store at") or not isinstance(urls, str):
            raise
        raise KdError(f"no logit store at {url}, one of the {len(split_urls(urls))} stores --logits-store {urls} "
                      f"names ({_HOW}): check the paths") from None


class StoreUnion:
    """The rows of ``parts`` in order, read as one LogitStore (see the module docstring)."""

    def __init__(self, parts: Sequence[LogitStore]) -> None:
        if len(parts) < 2:
            raise ValueError("a StoreUnion joins at least two stores (one store is itself)")
        self.parts = list(parts)
        for p in self.parts[1:]:
            check_compatible(self.parts[0], p)
        _refuse_repeated_identities(self.parts)
        sizes = np.array([len(p) for p in self.parts], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])  # (P + 1,) first union row of each part, then len
        self.id_offsets = _id_offsets(self.parts)  # (P,) added to part j's example ids
        self.url = join_urls([p.url for p in self.parts])
        ids = [p.identity for p in self.parts]
        self.identity = None if None in ids else hashlib.sha256("\n".join(ids).encode()).hexdigest()
        first = self.parts[0]
        # the per-store integrity records describe part 0's chunks only: a union has none
        self.attrs: dict[str, Any] = {k: v for k, v in first.attrs.items() if k not in ("manifest", "integrity")}
        self.attrs.update(num_examples=int(self.starts[-1]), parts=[p.url for p in self.parts])
        self.encoding, self.sampled = first.encoding, first.sampled
        if len({p.conversations for p in self.parts}) > 1:
            raise KdError(f"stores {self.url} mix conversation stores and text stores: a union joins stores of one "
                          "kind; train on each kind separately")
        self.conversations = first.conversations
        # prompt_id / finish_reason only when every part has them (each part's prompt ids are its own)
        self.generated = all(p.generated for p in self.parts)

    @property
    def part_identities(self) -> tuple[str | None, ...]:
        return tuple(p.identity for p in self.parts)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def seq_len(self) -> int:
        return self.parts[0].seq_len

    @property
    def k(self) -> int:
        return self.parts[0].k

    @property
    def vocab_size(self) -> int:
        return self.parts[0].vocab_size

    @property
    def chunk_rows(self) -> int:
        """Part 0's (parts may differ): readers use it only to size their reads."""
        return self.parts[0].chunk_rows

    def read(self, start: int, stop: int, keys: tuple[str, ...] = KEYS) -> dict[str, np.ndarray]:
        """Rows [start, stop) of the union: each part's share read with one ``read`` of that
        part, example ids shifted by the part's offset, then concatenated in order."""
        start, stop = max(0, start), min(stop, len(self))
        pieces = []
        for j, part in enumerate(self.parts):
            lo, hi = max(start, int(self.starts[j])), min(stop, int(self.starts[j + 1]))
            if lo >= hi:
                continue
            got = part.read(lo - int(self.starts[j]), hi - int(self.starts[j]), keys)
            if "example_id" in got and self.id_offsets[j]:
                got["example_id"] = got["example_id"] + self.id_offsets[j]
            pieces.append(got)
        if not pieces:
            return self.parts[0].read(0, 0, keys)
        if len(pieces) == 1:
            return pieces[0]
        return {key: np.concatenate([p[key] for p in pieces]) for key in keys}

    def read_targets(self, start: int, stop: int, keys: tuple[str, ...] = AT_POSITIONS) -> dict[str, np.ndarray]:
        """``LogitStore.read_targets`` over the union: examples numbered across the parts."""
        start, stop = max(0, start), min(stop, len(self))
        pieces = []
        for j, part in enumerate(self.parts):
            lo, hi = max(start, int(self.starts[j])), min(stop, int(self.starts[j + 1]))
            if lo < hi or not pieces and j == len(self.parts) - 1:
                got = part.read_targets(max(lo - int(self.starts[j]), 0), max(hi - int(self.starts[j]), 0), keys)
                got["example"] = got["example"] + int(self.starts[j])
                if "example_id" in got and self.id_offsets[j]:
                    got["example_id"] = got["example_id"] + self.id_offsets[j]
                pieces.append(got)
        return pieces[0] if len(pieces) == 1 else {key: np.concatenate([p[key] for p in pieces]) for key in pieces[0]}

    # int and step-1 slice indexing exactly as a LogitStore's: it needs only len() and read()
    __getitem__ = LogitStore.__getitem__
    keys = LogitStore.keys
    _trimmed = staticmethod(LogitStore._trimmed)


def check_compatible(a: LogitStore, b: LogitStore) -> None:
    """KdError naming the first field of MUST_MATCH on which stores ``a`` and ``b`` differ."""
    for what in MUST_MATCH:
        va, vb = _field(a.attrs, what), _field(b.attrs, what)
        while isinstance(va, dict) and isinstance(vb, dict) and va != vb:  # name the first differing entry
            key = next(k for k in sorted(set(va) | set(vb), key=str) if va.get(k) != vb.get(k))
            what, va, vb = f"{what}.{key}", va.get(key), vb.get(key)
        if va != vb:
            raise KdError(f"stores {a.url} and {b.url} differ in {what} ({_show(va)} vs {_show(vb)}): "
                          "train on stores precomputed from one teacher and tokenizer with the same --top-k, "
                          "--seq-len, --targets, --logprob-encoding, --dtype and --top-p/--budget (or on each store separately)")


def _field(attrs: dict[str, Any], path: str) -> Any:
    value: Any = attrs
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _show(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _resolved(url: str) -> str:
    """The URL with its protocol, the local path absolute: equal for two spellings of one place."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url)
    return fs.unstrip_protocol(path.rstrip("/"))


def _refuse_repeated_urls(urls: list[str]) -> None:
    seen: dict[str, str] = {}
    for u in urls:
        key = _resolved(u)
        if key in seen:
            raise KdError(f"stores {seen[key]} and {u} are the same store: list each store once in --logits-store")
        seen[key] = u


def _refuse_repeated_identities(parts: list[LogitStore]) -> None:
    seen: dict[str, str] = {}
    for p in parts:
        if p.identity is not None and p.identity in seen:
            raise KdError(f"stores {seen[p.identity]} and {p.url} are the same store (identity {p.identity[:12]}; "
                          "copies of one another): list each store once in --logits-store")
        if p.identity is not None:
            seen[p.identity] = p.url


def _id_offsets(parts: list[LogitStore]) -> np.ndarray:
    """(P,) int64: offset_j = sum over i < j of (largest example id of part i + 1); 0 for part 0.
    Reads every part but the last one's example_id array (8 bytes an example)."""
    offsets = np.zeros(len(parts), np.int64)
    for j, part in enumerate(parts[:-1]):
        ids = part.read(0, len(part), ("example_id",))["example_id"]  # (S_j,) int64
        offsets[j + 1] = offsets[j] + (int(ids.max()) + 1 if len(ids) else 0)
    return offsets
