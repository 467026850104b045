"""A complete store's integrity record (format version 4 and later): what its readers check.

- ``manifest_crc32c`` (MANIFEST_ARRAY): a uint32 array (A, C), row a = array ``manifest.arrays[a]``,
  column c = that array's chunk c, holding the crc32c trailer of every chunk object as finalize
  read and checked it. A reader compares each object's trailer with its entry (4 bytes a chunk):
  any chunk rewritten, replaced or swapped in from another store after finalize is refused.
- ``integrity`` attribute: ``attrs_sha256``, the sha256 of every other attribute as canonical JSON
  (sorted keys, no spaces), and ``manifest_sha256``, of the manifest's array names and its
  little-endian bytes. Readers recompute both at open: an edited attribute (``complete``,
  ``encoding.scale``, …) or manifest is refused.
- ``manifest.layout``: each array's chunk rows, row shape, dtype and transpose order, from its
  zarr.json, checked at open against the array's metadata (covered by attrs_sha256): a reader
  decodes only with the metadata the store was finalized with.
- identity: sha256 of the two checksums. It names one finalized store: a copy keeps it; any
  change to its attributes or chunks gives another, and so does a regeneration unless it is
  equal to the byte, to the second of its timestamps (``created_at``, ``finalized_at``) included.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from kdstream.errors import KdError
from kdstream.storage import shapes
from kdstream.storage.schema import CONVERSATION_VERSION, PADDED_RAGGED_VERSION, is_ragged

MANIFEST_ARRAY = "manifest_crc32c"
INTEGRITY = "integrity"
INTEGRITY_VERSION = 4  # stores of format_version >= this carry (and must carry) the record


def canonical(value: Any) -> bytes:
    """JSON with sorted keys and no spaces: the same bytes for equal attributes, whoever wrote them."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def attrs_sha256(attrs: dict[str, Any]) -> str:
    """sha256 of every attribute but ``integrity`` itself."""
    return hashlib.sha256(canonical({k: v for k, v in attrs.items() if k != INTEGRITY})).hexdigest()


def manifest_sha256(names: list[str], crcs: np.ndarray) -> str:
    """sha256 of the manifest: its array names, then its (A, C) crc32c values as little-endian uint32."""
    return hashlib.sha256(canonical(list(names)) + np.ascontiguousarray(crcs, dtype="<u4").tobytes()).hexdigest()


def identity(record: dict[str, Any]) -> str:
    return hashlib.sha256(f"{record['attrs_sha256']}:{record['manifest_sha256']}".encode()).hexdigest()


def layout(plan) -> dict[str, Any]:
    """What decoding takes from an array's zarr.json (a chunk_io.Plan): the chunk geometry and order."""
    return {"rows": plan.rows, "row_shape": list(plan.row_shape), "dtype": plan.dtype.str,
            "order": list(plan.order) if plan.order is not None else None}


def write_manifest(group, names: list[str], crcs: np.ndarray) -> None:
    """The (A, C) manifest array, one uncompressed object (crc32c values do not compress) with its own crc32c."""
    from zarr.codecs import Crc32cCodec

    arr = group.create_array(MANIFEST_ARRAY, shape=crcs.shape, chunks=(max(1, crcs.shape[0]), max(1, crcs.shape[1])),
                             dtype=np.uint32, compressors=[Crc32cCodec()], fill_value=0, overwrite=True)
    arr[...] = crcs


def check_attrs(url: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """The integrity record of a version >= 4 complete store, after checking the attributes against it."""
    record = attrs.get(INTEGRITY)
    if not isinstance(record, dict) or attrs_sha256(attrs) != record.get("attrs_sha256"):
        raise KdError(f"store {url}: attributes do not match their checksum (edited or damaged): "
                      "regenerate or re-copy it")
    return record


def load_manifest(group, url: str, attrs: dict[str, Any]) -> tuple[dict[str, np.ndarray], str]:
    """({array: (C,) uint32 crc32c of each chunk}, identity) of a version >= 4 complete store;
    KdError when the attributes or the manifest fail their checksum."""
    record = check_attrs(url, attrs)
    return read_manifest(group, url, attrs, record), identity(record)


def read_manifest(group, url: str, attrs: dict[str, Any], record: dict[str, Any]) -> dict[str, np.ndarray]:
    """{array: (C,) uint32 crc32c of each chunk} from MANIFEST_ARRAY, checked against ``record``."""
    manifest = attrs.get("manifest") or {}
    names = list(manifest.get("arrays") or [])
    try:
        chunks = shapes.chunk_count(attrs)
    except (KeyError, TypeError, ValueError) as exc:
        raise KdError(f"store {url}: its attributes lack or garble {exc} (zarr.json: edited or damaged): re-copy or "
                      "regenerate the store") from None
    if manifest.get("chunks") != chunks:
        raise KdError(f"store {url}: its manifest attribute counts {str(manifest.get('chunks'))[:20]} chunks, the "
                      f"store has {chunks} (edited or damaged): re-copy or regenerate the store")
    try:
        arr = shapes.check_array(url, group, MANIFEST_ARRAY, (len(names), chunks), max(1, len(names)))
        crcs = np.asarray(arr[...], dtype=np.uint32)  # (A, C): its shape checked first, then read
    except (KeyError, ValueError, RuntimeError, FileNotFoundError):
        crcs = None
    if crcs is None or crcs.shape != (len(names), chunks) or \
            manifest_sha256(names, crcs) != record.get("manifest_sha256"):
        raise KdError(f"store {url}: its chunk manifest ({MANIFEST_ARRAY}) is missing or does not match its "
                      "checksum (edited or damaged): re-copy or regenerate the store")
    return {name: crcs[a] for a, name in enumerate(names)}


def carried_record(group, attrs: dict[str, Any]) -> str | None:
    """Which part of an integrity record the store carries, whatever format_version it claims
    (the field, for messages); None for a store without any."""
    manifest = attrs.get("manifest")
    if INTEGRITY in attrs:
        return f"an {INTEGRITY} attribute"
    if isinstance(manifest, dict) and ("arrays" in manifest or "layout" in manifest):
        return "a manifest.arrays / manifest.layout attribute"
    if MANIFEST_ARRAY in group:
        return f"a {MANIFEST_ARRAY} array"
    return None


def format_version(url: str, attrs: dict[str, Any]) -> int:
    """The format_version attribute (1 when absent: the first stores had none); KdError unless an integer."""
    version = attrs.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise KdError(f"store {url}: format_version {str(version)[:40]!r} is not an integer (edited or damaged): "
                      "re-copy or regenerate the store")
    return version


def claimed_version(group, url: str, attrs: dict[str, Any]) -> int:
    """The store's format_version, after checking that it is no older than the fields the store
    carries: editing it down (4 → 3) must not turn the integrity checks off. KdError otherwise."""
    version = format_version(url, attrs)
    carried = carried_record(group, attrs) if version < INTEGRITY_VERSION else None
    needs = (INTEGRITY_VERSION, carried) if carried else None
    if needs is None and version < PADDED_RAGGED_VERSION and is_ragged(attrs):
        needs = (PADDED_RAGGED_VERSION, "a selection attribute of rows of their own length")
    if needs is None and version < CONVERSATION_VERSION and isinstance(attrs.get("conversations"), dict):
        needs = (CONVERSATION_VERSION, "a conversations attribute (one example per conversation)")
    if needs is not None:
        raise KdError(f"store {url} claims format version {version} but carries {needs[1]}, which only version "
                      f"{needs[0]} and later have: its format_version was edited or damaged; re-copy or regenerate "
                      "the store")
    return version


def has_record(group, url: str, attrs: dict[str, Any]) -> bool:
    """Whether the store must match an integrity record: complete, of format version >= 4 (checked
    against what it carries, ``claimed_version``)."""
    return claimed_version(group, url, attrs) >= INTEGRITY_VERSION and attrs.get("complete") is True


def identity_of(group, url: str, attrs: dict[str, Any]) -> str | None:
    """The store's identity after checking its integrity record; None for a store without one
    (incomplete, or format version < 4); KdError when the record does not check out."""
    if not has_record(group, url, attrs):
        return None
    return load_manifest(group, url, attrs)[1]
