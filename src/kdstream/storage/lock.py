"""One writer per share of a store: an owner mark per worker, kept inside the store.

``precompute-logits`` holds ``chunk_done/owners/<i>-of-<N>.json`` while it writes worker i's
chunks of a store: ``{pid, host, token, heartbeat, …}``. A second run whose share overlaps a
live holder's is refused with one line; parallel workers (``--num-workers N`` with distinct
``--worker-index``) own disjoint shares and run together.

Why there: the mark must work wherever the store lives (a local path or an object store, so a
plain object, no flock), and must not disturb Zarr. Zarr lists a group's members by the names
at its top level and warns about any that is not an array or group; inside the ``chunk_done``
array's prefix only ``c/<i>`` keys are chunks, and Zarr, ``done_chunks`` and ``verify`` ignore
the rest.

A killed run leaves its mark behind; it is taken over when its pid is dead on this host, or
when its heartbeat (rewritten every HEARTBEAT_S by a thread) is older than STALE_AFTER_S, for a
holder on another host (hosts' clocks must agree to well within that). A heartbeat more than
STALE_AFTER_S in the future is no live run's either (a clock that far off, or an edited mark):
it is taken over too, with a warning naming the mark's file. Two runs starting in the
same instant both write a mark; each reads it back after SETTLE_S and only the one whose token
is there goes on (object stores offer no atomic create-if-absent through fsspec).
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

from kdstream.errors import KdError
from kdstream.storage.chunks import DONE_ARRAY

OWNERS = f"{DONE_ARRAY}/owners"
HEARTBEAT_S = 30.0  # how often a holder rewrites its mark
STALE_AFTER_S = 120.0  # a mark not rewritten for this long belongs to a dead run (four missed beats)
SETTLE_S = 0.5  # wait before reading a freshly written mark back (a concurrent writer's mark lands by then)


@dataclass(frozen=True)
class Holder:
    """A run's owner mark, as stored."""

    pid: int
    host: str
    token: str  # unique per run: tells this run's mark from another's with the same pid
    worker_index: int
    num_workers: int
    started: float  # unix seconds
    heartbeat: float  # unix seconds of the last rewrite
    mark: str = field(default="", compare=False)  # the file it was read from (not stored in it)

    def describe(self) -> str:
        age = time.time() - self.heartbeat
        beat = f"last heartbeat {age:.0f} s ago" if age >= 0 else f"heartbeat {-age:.0f} s in the future"
        return (f"pid {self.pid} on {self.host}, worker index {self.worker_index} of {self.num_workers}, {beat}; "
                f"its mark: {self.mark}")

    def from_the_future(self, now: float) -> bool:
        """Whether the heartbeat lies further ahead than any live run's could (see the module docstring)."""
        return self.heartbeat - now >= STALE_AFTER_S

    def alive(self, now: float) -> bool:
        """Whether the run may still be writing (see the module docstring)."""
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass  # exists, another user's
        return now - self.heartbeat < STALE_AFTER_S and not self.from_the_future(now)

    def overlaps(self, worker_index: int, num_workers: int) -> bool:
        """Whether some group of chunks is owned by both shares: group g belongs to worker i of N
        when g % N == i (chunks.owned_groups), and g ≡ i (mod N), g ≡ j (mod M) has a solution iff
        i ≡ j (mod gcd(N, M)). Equal counts: the same index; one worker alone: every share."""
        return (self.worker_index - worker_index) % math.gcd(self.num_workers, num_workers) == 0


def _fs(url: str):
    from fsspec.core import url_to_fs

    return url_to_fs(str(url))


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _read(fs, path: str) -> Holder | None:
    """The mark at ``path``; None when it is gone or unreadable (a write cut short by a crash:
    marks are written whole, atomically on local disk)."""
    try:
        data = json.loads(fs.cat_file(path))
        return Holder(**{k: data[k] for k in Holder.__dataclass_fields__ if k != "mark"}, mark=str(path))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holders(url: str) -> list[Holder]:
    """Every readable mark in the store at ``url`` (dead runs' included)."""
    fs, root = _fs(url)
    try:
        names = fs.ls(f"{root}/{OWNERS}", detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [h for h in (_read(fs, n) for n in names if str(n).endswith(".json")) if h is not None]


def live_holders(url: str) -> list[Holder]:
    now = time.time()
    return [h for h in holders(url) if h.alive(now)]


class WorkerLock:
    """Hold worker ``worker_index`` of ``num_workers``'s share of the store at ``url``.

    ``with WorkerLock(url, i, n):`` takes the mark (KdError when a live run holds an overlapping
    share), rewrites it every HEARTBEAT_S, and removes it on exit, whether the run succeeded or
    failed (its store stays resumable either way)."""

    def __init__(self, url: str, worker_index: int, num_workers: int) -> None:
        self.url = str(url)
        self.fs, root = _fs(self.url)
        self.path = f"{root}/{OWNERS}/{worker_index}-of-{num_workers}.json"
        now = time.time()
        self.me = Holder(os.getpid(), socket.gethostname(), uuid.uuid4().hex, worker_index, num_workers, now, now,
                         mark=self.path)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: Holder | None = None  # set by the heartbeat when another run took the mark over
        self._warned: set[str] = set()  # marks from the future already warned about

    def _refuse_if_held(self) -> None:
        now = time.time()
        for other in holders(self.url):
            if other.token == self.me.token or not other.overlaps(self.me.worker_index, self.me.num_workers):
                continue
            if other.from_the_future(now):
                if other.mark not in self._warned:
                    self._warned.add(other.mark)
                    print(f"warning: taking over {other.mark}: its heartbeat is {other.heartbeat - now:.0f} s in the "
                          "future (a clock that far off, or an edited mark), which no live run's is", file=sys.stderr)
                continue
            if other.alive(now):
                raise KdError(f"another precompute-logits is writing {self.url} ({other.describe()}): wait for it "
                              f"to finish, or stop it; a killed run's claim expires {STALE_AFTER_S:.0f} s after "
                              "its last heartbeat")

    def _write(self) -> None:
        data = json.dumps({k: v for k, v in asdict(self.me).items() if k != "mark"}).encode()
        if _is_local(self.fs):  # whole or not at all: a reader never sees half a mark
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{self.me.token}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        else:
            self.fs.pipe_file(self.path, data)

    def acquire(self) -> None:
        self._refuse_if_held()
        self._write()
        time.sleep(SETTLE_S)
        mine = _read(self.fs, self.path)
        if mine is None or mine.token != self.me.token:  # another run wrote the same mark meanwhile
            self._refuse_if_held()
            raise KdError(f"another precompute-logits started on {self.url} at the same moment: rerun this one "
                          "once it finishes")
        self._refuse_if_held()  # an overlapping share (another worker count) claimed meanwhile
        self._thread = threading.Thread(target=self._beat, name="kdstream-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            current = _read(self.fs, self.path)
            if current is not None and current.token != self.me.token:
                self.lost = current  # taken over: this run was thought dead; stop claiming it
                return
            self.me = Holder(**{**asdict(self.me), "heartbeat": time.time()})
            try:
                self._write()
            except OSError:
                pass  # a transient store error: the next beat tries again

    def check(self) -> None:
        """KdError when another run took this share over (this run stalled past STALE_AFTER_S)."""
        if self.lost is not None:
            raise KdError(f"another precompute-logits took over this run's share of {self.url} "
                          f"({self.lost.describe()}): this run stops; let that one finish")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = _read(self.fs, self.path)
        if current is not None and current.token == self.me.token:
            try:
                self.fs.rm_file(self.path)
                if _is_local(self.fs):  # no empty owners/ folder left in a finished store
                    os.rmdir(os.path.dirname(self.path))
            except OSError:
                pass  # another worker's mark is still there, or the store is gone

    def __enter__(self) -> WorkerLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
