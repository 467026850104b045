"""One background thread that runs write jobs in order, so the caller (the teacher) never waits
on encoding and Zarr I/O unless it gets ``depth`` jobs ahead.

Numpy encoding, blosc/zstd and file writes release the GIL, as does the teacher's forward pass,
so the two overlap on separate cores. A job's exception stops the thread and is raised again in
the caller's thread at its next ``submit`` or at ``close``; jobs after a failed one never run.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class BackgroundWriter:
    """``submit(fn, *args)`` queues ``fn(*args)``; at most ``depth`` jobs wait besides the running
    one (a bounded memory: each job holds one group of scored rows). Use as a context manager:
    leaving it waits for every job, and raises the first job error.

    ``busy_s``: seconds the thread spent running jobs; ``wait_s``: seconds the caller spent
    blocked in ``submit``/``close`` waiting for it (what the writing did not hide).
    """

    def __init__(self, depth: int = 1) -> None:
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self.busy_s = 0.0
        self.wait_s = 0.0
        self._thread = threading.Thread(target=self._run, name="kdstream-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._error is None:  # after a failure, drain without running
                fn, args = job
                start = time.perf_counter()
                try:
                    fn(*args)
                except BaseException as exc:  # re-raised in the caller's thread
                    self._error = exc
                self.busy_s += time.perf_counter() - start

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise()
        start = time.perf_counter()
        self._jobs.put((fn, args))  # blocks while `depth` jobs are waiting
        self.wait_s += time.perf_counter() - start

    def close(self) -> None:
        """Wait for every queued job; raise the first error of any."""
        start = time.perf_counter()
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self.wait_s += time.perf_counter() - start
        self._raise()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # The caller failed: let the queued writes finish (they are complete chunks, each marked
        # done on its own), then let the caller's exception propagate.
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
