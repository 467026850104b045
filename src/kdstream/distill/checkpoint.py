"""Resumable training state: model, optimizer, scheduler, RNG and loader position.

A checkpoint is a directory ``step-N`` (model via ``save_pretrained`` so any intermediate
checkpoint is usable on its own, plus ``state.pt``) written under a temporary name and renamed,
so a kill mid-write leaves the previous checkpoint intact. Only the latest is kept.
"""
from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CHECKPOINTS = "checkpoints"


@dataclass
class Position:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epoch in progress
    batch_in_epoch: int = 0  # batches of that epoch already consumed


def save_checkpoint(run_dir: Path, net, optimizer, scheduler, pos: Position) -> Path:
    root = run_dir / CHECKPOINTS
    final = root / f"step-{pos.step:08d}"
    tmp = root / f".tmp-step-{pos.step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    net.save_pretrained(str(tmp))
    torch.save(
        {
            "position": vars(pos).copy(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        },
        tmp / "state.pt",
    )
    tmp.rename(final)
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None


def load_checkpoint(path: Path, net, optimizer, scheduler) -> Position:
    """Restore everything in place; returns where training stopped."""
    # from_pretrained maps the saved names back to this transformers version's module names.
    saved = type(net).from_pretrained(str(path), dtype=torch.float32)
    net.load_state_dict(saved.state_dict())
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return Position(**state["position"])
