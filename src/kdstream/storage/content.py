"""What a resume compares a store by: its identity (integrity.py), or, for a store without one
(format version < 4: no integrity record), the sha256 of its content, so that another store at
the same path is refused and the same store at another path is not.

The content digest covers the group attributes (canonical JSON) and every file of the store's data
arrays (their zarr.json and chunk objects: names, sizes and bytes), not the chunk markers, a store
card or owner marks. Computing it reads the whole store once; it is then cached per user
(``$XDG_CACHE_HOME/kdstream/store_digests.json``, JSON) by the store's resolved URL and a stamp of
its attributes and of its files' names, sizes and times (mtime and ctime, or an object store's
ETag and LastModified), so that a resume or a checkpoint save on the same files hashes nothing
again.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from kdstream.model_files import cache_path, load_cache, save_cache
from kdstream.storage.integrity import canonical
from kdstream.storage.schema import arrays_of

PREFIX = "content-sha256:"  # a digest of content, never equal to an identity (64 hex digits)
_STAMP_FIELDS = ("size", "mtime", "created", "ino", "ETag", "etag", "LastModified", "last_modified")
_BLOCK = 8 << 20  # bytes per read while hashing


def store_key(store) -> str | None:
    """What ``store`` (a LogitStore or StoreUnion, or None) is compared by on resume: its identity,
    else ``PREFIX`` + the digest of its content (a union's: of its parts' keys, in order)."""
    if store is None or store.identity is not None:
        return None if store is None else store.identity
    parts = getattr(store, "parts", None)
    if parts:
        keys = "\n".join(str(store_key(p)) for p in parts)
        return PREFIX + hashlib.sha256(keys.encode()).hexdigest()
    return PREFIX + content_digest(store.url, store.attrs, sorted(arrays_of(store.attrs)))


def content_digest(url: str, attrs: dict[str, Any], arrays: list[str]) -> str:
    """sha256 of the attributes and of every file of ``arrays`` of the store at ``url``, from the
    cache when the files' stamp is unchanged."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(url))
    root = root.rstrip("/")
    files: dict[str, dict] = {}
    for name in arrays:
        files.update(fs.find(f"{root}/{name}", detail=True))
    listing = sorted((path[len(root) + 1:], info) for path, info in files.items())
    attributes = canonical(json.loads(json.dumps(attrs)))  # as zarr.json gives them back
    stamp = hashlib.sha256(attributes + canonical([[rel, {k: str(info[k]) for k in _STAMP_FIELDS if k in info}]
                                                   for rel, info in listing])).hexdigest()
    target = cache_path("store_digests.json")
    cache = load_cache(target)
    key = fs.unstrip_protocol(root)
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    h = hashlib.sha256(attributes)
    for rel, info in listing:
        h.update(f"\n{rel}\n{info.get('size')}\n".encode())
        with fs.open(f"{root}/{rel}", "rb") as f:
            while block := f.read(_BLOCK):
                h.update(block)
    cache[key] = {"stamp": stamp, "sha256": h.hexdigest()}
    save_cache(cache, target)
    return cache[key]["sha256"]
