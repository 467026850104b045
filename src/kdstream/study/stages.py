"""Run a study stage as the `kdstream …` command a user would type, skipped when its finished
output exists (so an interrupted study resumes where it stopped)."""
from __future__ import annotations

import json
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
        if self.train_launcher and args[0] == "distill":
            command = [*self.train_launcher, "-m", "kdstream", *args]
        else:
            command = [sys.executable, "-m", "kdstream", *args]
        shown = "kdstream " + " ".join(args) if command[0] == sys.executable else " ".join(command)
        print(f"[{self.label}] {name}: {shown}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = subprocess.run(command,
                                stdout=subprocess.DEVNULL if quiet else None)
        if result.returncode != 0:
            raise KdError(f"stage {name} of {self.label} failed (exit {result.returncode}); "
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


def store_complete(path: Path) -> bool:
    from kdstream.storage import open_store

    try:
        open_store(str(path))  # refuses a missing or unfinished store
    except KdError:
        return False
    return True
