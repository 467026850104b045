"""The state of one training run, in small records the recipe's steps share.

``trainer.train`` builds ``Run`` and ``TrainData`` in its setup steps; its train loop advances ``Run.pos``; the
optimizer step (``step.py``), the held-out loss (``held_out.py``) and the checkpoint writer read
them instead of long argument lists. Nothing here imports torch, so ``--help`` stays quick.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from kdstream.distill.distributed import Dist
    from kdstream.distill.options import DistillOptions


@dataclass
class Position:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epoch in progress
    batch_in_epoch: int = 0  # batches of that epoch already consumed


@dataclass(frozen=True)
class RunRecord:
    """What a checkpoint says about the run that made it (compared by ``--resume``)."""

    options: dict  # options_dict of the DistillOptions, precision resolved
    store_identity: str | None


@dataclass
class Run:
    """Where the run executes, what it trains, and how far it got."""

    opts: DistillOptions
    net: Any  # the HF causal LM itself: what the optimizer updates and checkpoints save
    model: Any  # Objective(net), wrapped for DDP / FSDP2 when ranks > 1: returns [loss, ce, kd]
    optimizer: Any  # AdamW over net's parameters
    scheduler: Any  # LambdaLR: linear warmup, then cosine decay to 0
    device: Any  # torch.device of this rank
    d: Dist  # this rank and the world size
    bf16: bool  # bf16 autocast (the resolved --precision)
    partial: Path  # OUT.partial: metrics, checkpoints, then the final model
    record: RunRecord  # the options as checkpoints record them and --resume compares them
    resumed_from: Path | None  # the checkpoint this run continues (None: a fresh start)
    pos: Position  # optimizer steps taken and the loader's place in the epoch
    skipped: dict[str, int] = field(default_factory=dict)  # cross-tokenizer: examples skipped by reason (this rank)


@dataclass(frozen=True)
class TrainData:
    """What the run reads: its rows, split into trained and held-out, and the steps they make."""

    source: Any  # the ExampleSource (a store or tokenized dataset): len, identity
    open_source: Callable[[], Any]  # opens the source again (in a DataLoader worker, for the held-out loss)
    seq_len: int  # tokens per example
    kept: np.ndarray | None  # (len(source),) bool: rows trained on (None: every row)
    held_out: np.ndarray  # (eval_examples,) row indices evaluated, never trained on
    keys: tuple[str, ...]  # arrays a batch carries to the objective
    num_train: int  # rows trained on per epoch
    total_steps: int  # optimizer steps over all epochs
    transform: Callable[[dict], dict] | None = None  # rows → a cross-tokenizer batch (cross_tokenizer.CrossTargets)
    # (V,) UTF-8 bytes of each of the student's token ids (text/token_bytes.py): bits per byte of the
    # held-out rows; None in a cross-tokenizer run (its spans come from the alignment) or without one
    byte_lengths: np.ndarray | None = None
