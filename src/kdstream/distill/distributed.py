"""Data-parallel training under torchrun: process group set-up and the split of a global batch.

Every rank walks the same seeded sequence of global batches and takes its own slice of each,
weighting its loss by its share of tokens, so DDP's gradient average equals the gradient of the
global-batch mean: N ranks with the same global batch train the same model as one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_from_env() -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size())


def local_slice(n: int, d: Dist) -> tuple[np.ndarray, float]:
    """(row indices of this rank's share of an n-row global batch, loss weight).

    The weight is (local rows / global rows) * world; DDP divides the summed gradients by
    world. A rank left without rows (n < world) computes row 0 with weight 0 so that every
    rank still runs the same collective backward pass.
    """
    rows = np.array_split(np.arange(n), d.world)[d.rank]
    if len(rows) == 0:
        return np.arange(1), 0.0
    return rows, len(rows) / n * d.world


def all_mean(value: float, weight: float, d: Dist) -> float:
    """Global mean of a per-rank mean weighted as in ``local_slice`` (for logging)."""
    if not d.active:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value * weight / d.world], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.destroy_process_group()
