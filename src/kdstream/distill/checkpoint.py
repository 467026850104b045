"""Resumable training state: model, optimizer, scheduler, RNG and loader position.

A checkpoint is a directory ``step-N`` (model via ``save_pretrained`` so any intermediate
checkpoint is usable on its own, plus ``state.pt``) written under a temporary name and renamed,
so a kill mid-write leaves the previous checkpoint intact. Only the latest is kept.

Under FSDP the weights and optimizer state are sharded: ``gather_state`` (a collective, every
rank calls it) assembles full tensors on the CPU, rank 0 writes them, and ``load_checkpoint``
hands every rank the full state to re-shard. The files are the same with and without FSDP (the
optimizer state keyed by parameter name either way), so a run can resume under the other.
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


def gather_state(net, optimizer, fsdp: bool) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict) with full, unsharded CPU tensors; the optimizer's
    keyed by parameter name (torch.distributed.checkpoint's form) with or without FSDP, so a
    checkpoint of either kind resumes under the other."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    if not fsdp:
        _, optim = get_state_dict(net, optimizer, options=StateDictOptions(full_state_dict=True))
        return net.state_dict(), optim
    return get_state_dict(net, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_model(net, model_state: dict, directory: Path) -> None:
    """``save_pretrained`` with explicit (possibly gathered) weights."""
    net.save_pretrained(str(directory), state_dict=model_state)


def save_checkpoint(run_dir: Path, net, model_state: dict, optim_state: dict, scheduler, pos: Position) -> Path:
    """Rank 0 only: write ``step-N`` from states returned by ``gather_state``."""
    root = run_dir / CHECKPOINTS
    final = root / f"step-{pos.step:08d}"
    tmp = root / f".tmp-step-{pos.step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(net, model_state, tmp)
    torch.save(
        {
            "position": vars(pos).copy(),
            "optimizer": optim_state,
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


def load_checkpoint(path: Path, net, optimizer, scheduler, fsdp: bool = False) -> Position:
    """Restore everything in place (every rank); returns where training stopped."""
    # from_pretrained maps the saved names back to this transformers version's module names.
    weights = type(net).from_pretrained(str(path), dtype=torch.float32).state_dict()
    state = torch.load(path / "state.pt", weights_only=False)
    optim = state["optimizer"]
    if not fsdp and all(isinstance(k, int) for k in optim["state"]):
        # written before checkpoints keyed the optimizer by parameter name: plain torch form
        device = next(net.parameters()).device
        net.load_state_dict({k: v.to(device) for k, v in weights.items()})
        optimizer.load_state_dict(optim)
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        # FSDP re-shards the full tensors; without FSDP this is a plain load by parameter name
        set_state_dict(net, optimizer, model_state_dict=weights, optim_state_dict=optim,
                       options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return Position(**state["position"])
