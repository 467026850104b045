"""One optimizer step on this rank's share of a global batch, in ``--grad-accum`` micro-batches.

Each micro-batch's mean loss is weighted by its share of the global batch's rows (times world
size, as DDP/FSDP average gradients over ranks), so the update equals one backward of the
global-batch mean whatever grad_accum and world size are. Every rank runs the same number of
forward/backward passes (a rank without rows for a micro-batch runs one row at weight 0)
because FSDP gathers weights collectively in each one.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from kdstream.distill.cross_tokenizer import ALIGNED, PAD_ID

if TYPE_CHECKING:
    from kdstream.distill.run_state import Run


def _aligned_micro(run: Run, aligned: list, idx, pad_id: int):
    """One micro-batch of a cross-tokenizer batch, collated (padded) on this rank's device. A rank
    or micro-batch left without examples (all skipped) runs on the batch's first one, or on an
    empty one-token example, at weight 0."""
    from kdstream.distill.aligned_batch import collate_aligned, empty_example

    chosen = [aligned[i] for i in idx if i < len(aligned)] or aligned[:1] or [empty_example()]
    return collate_aligned(chosen, pad_id=pad_id).to(run.device, non_blocking=True)


def _sync(run: Run, on: bool):
    """Gradient all-reduce only in the last micro-batch's backward."""
    if run.opts.fsdp:
        run.model.set_requires_gradient_sync(on)
    elif run.d.active and not on:
        return run.model.no_sync()
    return contextlib.nullcontext()


def optimizer_step(run: Run, keys: tuple[str, ...], batch: dict, weight: float) -> tuple[float, float, float, float]:
    """Forward/backward every micro-batch of ``batch`` ({key: (rows, ...) tensor}, this rank's
    rows), clip, step; returns the global-batch (loss, ce, kd, grad norm) for logging."""
    import numpy as np
    import torch

    from kdstream.distill import distributed

    aligned = batch.get(ALIGNED)  # a cross-tokenizer batch: this rank's aligned examples
    rows = len(aligned) if aligned is not None else batch["input_ids"].shape[0]
    parts = np.array_split(np.arange(rows), run.opts.grad_accum)
    run.optimizer.zero_grad(set_to_none=True)
    logged = torch.zeros(3, dtype=torch.float64)
    # conversations: a micro-batch's mean weighs by its target positions among the global batch's
    targets = (batch["topk_len"] > 0).sum(1).numpy() if "topk_len" in batch and aligned is None else None
    global_targets = distributed.all_sum([float(targets.sum())], run.d)[0] if targets is not None else 0.0
    for j, idx in enumerate(parts):
        share = len(idx) / rows if rows else 0.0
        scale = weight * share
        if targets is not None:
            share = float(targets[idx].sum()) / max(float(targets.sum()), 1.0)
            scale = run.d.world * float(targets[idx].sum()) / max(global_targets, 1.0)
        idx = idx if len(idx) else np.arange(1)  # keep collectives in step; weight 0 below
        if aligned is not None:
            micro = {"aligned": _aligned_micro(run, aligned, idx, batch[PAD_ID])}
        else:
            micro = {k: batch[k][torch.from_numpy(idx)].to(run.device, non_blocking=True) for k in keys}
            if "topk_len" in micro and run.opts.batching == "packed":  # conversations laid end to end
                from kdstream.distill.conversation_batch import pack

                micro = pack(micro)
        with _sync(run, j == len(parts) - 1):
            with torch.autocast(run.device.type, torch.bfloat16, enabled=run.bf16):
                out = run.model(**micro)  # [loss, ce, kd], means over this micro-batch's positions
            (out[0] * scale).backward()
        logged += out.detach().double().cpu() * share
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.opts.max_grad_norm)
    run.optimizer.step()
    loss, ce, kd = (distributed.all_mean(float(v), weight, run.d) for v in logged)
    return loss, ce, kd, float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
