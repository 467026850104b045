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


def pick_device(choice: str):
    """torch.device for --device auto|cpu|cuda; under torchrun, rank r uses cuda:LOCAL_RANK."""
    import torch

    from kdstream.errors import KdError

    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise KdError("--device cuda but no CUDA device is visible: use --device cpu (or auto)")
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_from_env(device_type: str = "cpu") -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL for CUDA, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size())


def wrap(model, d: Dist, device, fsdp: bool):
    """DDP (replicated weights, gradients all-reduced in backward) or FSDP2 (``fully_shard`` on
    every transformer block, then on the whole: weights, gradients and optimizer state sharded
    across ranks, gathered one block at a time) for students that do not fit one device."""
    import torch

    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (d.world,))
        for layer in transformer_blocks(model.net):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    if d.active:
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def transformer_blocks(net) -> list:
    """The repeated blocks of a HF causal LM (the first ModuleList under its base model)."""
    import torch

    for child in net.base_model.children():
        if isinstance(child, torch.nn.ModuleList):
            return list(child)
    from kdstream.errors import KdError

    raise KdError(f"--fsdp: found no list of transformer blocks in {type(net).__name__}: train without --fsdp")


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
    return all_sum([value * weight / d.world], d)[0] if d.active else value


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Element-wise sum over ranks (float64; on the GPU under NCCL, which cannot reduce CPU tensors)."""
    if not d.active:
        return list(values)
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.destroy_process_group()
