"""The one rule for "do these tokenizers match": the same fingerprint (tokenizers.py), so every
string maps to the same ids. File formats and names may differ.

A side is a tokenizer, a store (LogitStore or StoreUnion: the fingerprint its ``tokenizer``
attribute records), a fingerprint dict, or a fingerprint's sha256.
"""
from __future__ import annotations

from typing import Any

from kdstream.text.tokenizers import tokenizer_fingerprint


def recorded_fingerprint(store) -> dict[str, Any]:
    """The ``tokenizer`` attribute of ``store`` ({"sha256", "vocab_size", ...}; {} when absent)."""
    return dict(store.attrs.get("tokenizer") or {})


def fingerprint_sha(side) -> str | None:
    """The sha256 that identifies ``side``'s tokenizer (None: a store that records none)."""
    if side is None or isinstance(side, str):
        return side
    if isinstance(side, dict):
        return side.get("sha256")
    if hasattr(side, "get_vocab"):  # a tokenizer
        return tokenizer_fingerprint(side)["sha256"]
    return recorded_fingerprint(side).get("sha256")


def tokenizers_match(a, b) -> bool:
    """Whether ``a`` and ``b`` (see the module docstring) are the same tokenizer; an unknown side never matches."""
    sha = fingerprint_sha(a)
    return sha is not None and sha == fingerprint_sha(b)
