"""Output directories that only ever look finished when they are: work goes into ``OUT.partial``
and is renamed to ``OUT`` at the end (a crash leaves only the ``.partial`` directory behind)."""
from __future__ import annotations

import shutil
from pathlib import Path


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def fresh_partial(out: Path) -> Path:
    """An empty ``OUT.partial`` (leftovers of an earlier crashed run are removed)."""
    partial = partial_path(out)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def publish(partial: Path, out: Path) -> None:
    """Replace ``out`` with the finished ``partial`` directory."""
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
