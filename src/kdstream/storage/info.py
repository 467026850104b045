"""What a store says it is: its identity and attributes, as ``kdstream store info`` prints them.

Works on an incomplete store too (it shows ``complete: false``): the attributes say what the store
claims to be even when it is unfinished or its integrity record fails.
"""
from __future__ import annotations

from typing import Any

from kdstream.errors import KdError
from kdstream.storage.integrity import identity_of
from kdstream.storage.schema import token_counts
from kdstream.storage.tokenizer_files import recorded
from kdstream.storage.verify import open_group

# Shown first, in this order; every other attribute follows as stored.
INFO_FIRST = (
    "format", "format_version", "complete", "created_at", "num_examples", "seq_len", "k", "vocab_size",
    "targets", "encoding", "source_top_k", "chunk_rows", "teacher", "tokenizer", "corpus", "engine",
    "precompute_seconds", "dtypes",
)


def store_info(url: str) -> dict[str, Any]:
    """``{"store", "identity", "identity_note", "checked", "tokenizer_files", "attributes"}`` of the
    store at ``url`` (path or fsspec URL); ``tokenizer_files``: the names of the tokenizer files it
    carries (tokenizer_files.py), [] for none.

    identity: the finalized store's sha256 name (integrity.py), checked against its integrity
    record; None when it has none (incomplete, or format version < 4; ``checked`` False) or when the
    record does not check out (``checked`` True), ``identity_note`` then saying why ("unverified"
    for a complete store without a record): not an error,
    so that the attributes can still be read. KdError when ``url`` holds no kdstream store.
    """
    group = open_group(url)
    attrs = dict(group.attrs)
    note, checked = None, True  # checked: the store has an integrity record, and it was checked
    try:
        ident = identity_of(group, str(url), attrs)
        if ident is None:
            checked = False
            note = "incomplete" if attrs.get("complete") is not True else (
                f"unverified: format version {attrs.get('format_version', 1)} carries no integrity record, so its "
                "chunks and attributes cannot be checked against one; a resume compares the digest of its content")
    except KdError as exc:
        ident, note = None, str(exc)
    ordered = {key: attrs[key] for key in INFO_FIRST if key in attrs}
    size = _size(url, attrs)
    ordered.update({key: value for key, value in attrs.items() if key not in ordered})
    return {"store": str(url), "identity": ident, "identity_note": note, "checked": checked,
            "tokenizer_files": [f.get("name") for f in recorded(attrs)],  # [] in stores written before them
            **({"size": size} if size else {}), "attributes": ordered}


def _size(url: str, attrs: dict[str, Any]) -> dict[str, Any] | None:
    """Examples, tokens, target positions (rows the loss uses) and the data bytes per token and
    per target position (the tokenizer files a store carries left out); None before it is complete."""
    from kdstream.storage import tokenizer_files
    from kdstream.storage.reader import disk_bytes

    if not attrs.get("complete"):
        return None
    try:
        n, (tokens, positions) = int(attrs["num_examples"]), token_counts(attrs)
    except (KeyError, TypeError, ValueError):
        return None
    data = disk_bytes(url) - tokenizer_files.disk_bytes(url)
    return {"examples": n, "tokens": tokens, "target_positions": positions, "bytes": data,
            "bytes_per_token": round(data / max(tokens, 1), 1),
            "bytes_per_target_position": round(data / max(positions, 1), 1)}
