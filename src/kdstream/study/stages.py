"""Run a study stage as the `kdstream …` command a user would type, skipped when its finished
output exists (so an interrupted study resumes where it stopped)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kdstream.errors import KdError


class Stages:
    """Runs stages in order, printing each command, and records the seconds each took."""

    def __init__(self, label: str, log: Path, train_launcher: tuple[str, ...] = ()) -> None:
        self.label = label
        self.train_launcher = train_launcher  # e.g. ("torchrun", "--nproc_per_node", "8") for distill
        self.log = log  # JSON {stage: seconds}, saved after every stage so a resumed run keeps them
        self.previous = json.loads(log.read_text()) if log.exists() else {}
        self.seconds: dict[str, float] = {}

    def _record(self, name: str, seconds: float) -> None:
        self.seconds[name] = seconds
        self.log.write_text(json.dumps({**self.previous, **self.seconds}, indent=1))

    def run(self, name: str, done: bool, args: list[str], quiet: bool = False) -> None:
        """``quiet``: drop the command's stdout (its files hold the same), keep its stderr."""
        if done:
            print(f"[{self.label}] {name}: already done, skipping", file=sys.stderr)
            self.seconds[name] = self.previous.get(name, 0.0)
            return
        launched = bool(self.train_launcher) and args[0] == "distill"
        shown = " ".join([*self.train_launcher, "-m", "kdstream", *args]) if launched else "kdstream " + " ".join(args)
        print(f"[{self.label}] {name}: {shown}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        code = _run_command(args, quiet, self.train_launcher if launched else ())
        if code != 0:
            raise KdError(f"stage {name} of {self.label} failed (exit {code}); "
                          "fix the error above and rerun the same command to resume")
        self._record(name, round(time.perf_counter() - start, 1))

    def in_process(self, name: str, done: bool, fn) -> None:
        """A stage that is a library call (no command of its own), e.g. planting canaries."""
        if done:
            self.seconds[name] = self.previous.get(name, 0.0)
            return
        print(f"[{self.label}] {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        fn()
        self._record(name, round(time.perf_counter() - start, 1))


def _run_command(args: list[str], quiet: bool, launcher: tuple[str, ...]) -> int:
    """`python -m kdstream ARGS` (under ``launcher`` if any) -> its exit code. Without a launcher
    the command is a fork of this process's fork server (forkserver.py: torch, transformers and
    the rest imported once, not once per stage); a launcher's ranks
    and ``KDSTREAM_FORKSERVER=0`` get fresh interpreters."""
    from kdstream import forkserver

    stdout = subprocess.DEVNULL if quiet else None
    server = None
    if not launcher and forkserver.enabled():
        try:
            server = forkserver.shared()
        except forkserver.ForkServerError as exc:  # e.g. a broken import: the command itself will say what
            print(f"[study] {exc}; running the stage as a fresh interpreter", file=sys.stderr)
    if server is None:
        return subprocess.run([*(launcher or (sys.executable,)), "-m", "kdstream", *args], stdout=stdout).returncode
    sys.stdout.flush()  # the fork writes to the same files: what this process printed comes first
    sys.stderr.flush()
    try:
        return server.run(args, env=dict(os.environ), cwd=os.getcwd(), stdout=os.devnull if quiet else None)
    except forkserver.ForkServerError as exc:  # killed under the stage (e.g. out of memory)
        raise KdError(f"{exc} while running `kdstream {args[0]}`; rerun the same command to resume") from None


def store_complete(path: Path) -> bool:
    from kdstream.storage import open_store

    try:
        open_store(str(path))  # refuses a missing or unfinished store
    except KdError:
        return False
    return True
