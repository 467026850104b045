"""Every array's shape, chunks and dtype checked against what the store's attributes imply, before
any of it is read: an array's zarr.json is a small file anyone can edit, and a shape of 3e9 behind
it would have a reader allocate, list or loop over 3e9 rows that are not there. So a hostile store
costs no more memory and time than the honest store its attributes describe.

    data arrays      (S, *row) or (C, V) for id_table   rows per chunk = chunk_rows (1 for id_table)
    chunk_done       (C,)                                one element per chunk (chunks.py)
    manifest_crc32c  (A, C)                              one chunk (integrity.py)
    tokenizer/<f>    (size,)                             one chunk (tokenizer_files.py)
with C = ceil(S / chunk_rows) and the row shapes and dtypes of schema.array_specs.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kdstream.errors import KdError
from kdstream.storage.chunks import num_chunks
from kdstream.storage.schema import PER_CHUNK, array_specs, is_conversations, is_generated, is_ragged


def _positive(attrs: dict[str, Any], key: str) -> int:
    value = attrs[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "num_examples" else 1):
        raise ValueError(f"{key} {str(value)[:40]!r}")
    return value


def chunk_count(attrs: dict[str, Any]) -> int:
    """C, the store's chunks, from ``num_examples`` and ``chunk_rows``; ValueError / KeyError when
    either is missing or not a positive integer."""
    return num_chunks(_positive(attrs, "num_examples"), _positive(attrs, "chunk_rows"))


def expected(attrs: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], int, np.dtype]]:
    """{array: (shape, rows per chunk, dtype)} of every data array of the store; ValueError,
    KeyError or TypeError when the attributes lack or garble what they are computed from."""
    version = attrs.get("format_version", 1)
    logprobs = (attrs.get("encoding") or {}).get("topk_logprobs", "fp32")
    specs = array_specs(_positive(attrs, "seq_len"), _positive(attrs, "k"), _positive(attrs, "vocab_size"),
                        logprobs, version, is_ragged(attrs), is_conversations(attrs), is_generated(attrs))
    n, rows, chunks = _positive(attrs, "num_examples"), _positive(attrs, "chunk_rows"), chunk_count(attrs)
    return {name: (((chunks,) if name in PER_CHUNK else (n,)) + shape, 1 if name in PER_CHUNK else rows, dtype)
            for name, (shape, dtype) in specs.items()}


def problems(name: str, arr, shape: tuple[int, ...], rows: int, dtype: np.dtype | None = None) -> list[str]:
    """What is wrong with array ``name`` against its expected shape, rows per chunk (axis 0) and
    dtype: [] when nothing. Chunks along the other axes may be smaller than the array, never larger."""
    out = []
    if tuple(arr.shape) != tuple(shape):
        out.append(f"{name} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    if dtype is not None and np.dtype(arr.dtype) != dtype:
        out.append(f"{name} has dtype {arr.dtype}, expected {dtype}")
    chunks = tuple(arr.chunks)
    if len(chunks) != len(shape) or chunks[0] != rows or any(c > max(1, s) for c, s in zip(chunks[1:], shape[1:])):
        out.append(f"{name} has chunks {chunks}, expected {rows} rows per chunk (the store's chunk_rows)"
                   if len(chunks) == len(shape) and chunks[0] != rows else
                   f"{name} has chunks {chunks}, larger than its shape {tuple(shape)}")
    return out


def data_problems(attrs: dict[str, Any], arrays: dict[str, Any]) -> tuple[list[str], set[str]]:
    """(problems, the arrays they concern) of the data arrays ``arrays`` against the attributes;
    when the attributes cannot say, a problem and every array (none can be read safely)."""
    try:
        want = expected(attrs)
    except (KeyError, TypeError, ValueError) as exc:
        return [f"group attributes lack or garble {exc}: cannot check array shapes"], set(arrays)
    found: list[str] = []
    bad: set[str] = set()
    for name, arr in arrays.items():
        shape, rows, dtype = want[name]
        got = problems(name, arr, shape, rows, dtype)
        found += got
        if got:
            bad.add(name)
    return found, bad


def refuse(url: str, problem: str, file: str) -> KdError:
    """The one-line error for an array whose metadata is not what the store's attributes imply."""
    return KdError(f"store {url}: {problem} ({file}: edited or damaged); nothing was read from it: re-copy or "
                   "regenerate the store")


def check_data(url: str, attrs: dict[str, Any], arrays: dict[str, Any]) -> None:
    """KdError naming the first data array whose shape, chunks or dtype is not what the attributes imply."""
    try:
        want = expected(attrs)
    except (KeyError, TypeError, ValueError) as exc:
        raise KdError(f"store {url}: its attributes lack or garble {exc} (zarr.json: edited or damaged): re-copy or "
                      "regenerate the store") from None
    for name, arr in arrays.items():
        found = problems(name, arr, *want[name])
        if found:
            raise refuse(url, found[0], f"{name}/zarr.json")


def check_array(url: str, group, name: str, shape: tuple[int, ...], rows: int) -> Any:
    """``group[name]`` after checking its shape and rows per chunk (KdError, naming its zarr.json)."""
    arr = group[name]
    found = problems(name, arr, shape, rows)
    if found:
        raise refuse(url, found[0], f"{arr.store_path.path}/zarr.json")
    return arr
