"""Keep freed memory in the process for the next read (glibc's malloc), instead of handing it
back to the kernel after every read and faulting it in again, zeroed, page by page.

A chunk read allocates a few MB of output (a fixed top-64 chunk of 32 × 256 tokens: 4 MB of
int64 ids, 2 MB of float32 logprobs). With glibc's default, dynamic thresholds, memory freed at
the top of the heap beyond twice the largest recent mmap'd block is trimmed, so a loop of reads
whose outputs outlive the next read (any loader's) keeps trimming and faulting, and the read rate
swings from one process to the next on the same store (docs/benchmarks.md, read rates). Fixing the thresholds at 32 MB (mmap)
and 64 MB (trim) keeps at most 64 MB of freed memory at the top of the heap and makes the rate
repeatable.

kdstream's loaders (distill's, ``kdstream.torch.StoreDataset``) call ``keep_freed_memory`` in
the process that reads; another trainer may call it too. ``KDSTREAM_KEEP_FREED_MEMORY=0`` turns
it off. Elsewhere than glibc (macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # bytes: larger allocations are their own mappings, returned on free
TRIM_THRESHOLD = 64 << 20  # bytes of free memory at the heap's top kept for reuse

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds once per process (see the module's docstring): True when
    they are set, False where that is off or not glibc."""
    global _done
    if _done is None:
        _done = False
        if os.environ.get("KDSTREAM_KEEP_FREED_MEMORY", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # no C library by that name, or not glibc
                return False
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
