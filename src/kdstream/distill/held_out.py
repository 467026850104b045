"""The loss on the held-out rows (``--eval-examples``), evaluated during training."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdstream.distill.run_state import Run, TrainData


def held_out_loss(run: Run, data: TrainData) -> dict:
    """Mean [loss, ce, kd] over the held-out rows, split across ranks (every rank runs the same
    number of forward passes, for FSDP), without gradients; the model is left in train mode."""
    import numpy as np
    import torch

    from kdstream.distill import distributed
    from kdstream.distill.aligned_batch import collate_aligned, empty_example
    from kdstream.distill.cross_tokenizer import ALIGNED, PAD_ID
    from kdstream.distill.loader import BlockReader

    rows, batch_size, d = data.held_out, run.opts.batch_size, run.d
    reader = BlockReader(data.open_source(), run.opts.shuffle_block, data.keys)
    mine = np.array_split(rows, d.world)[d.rank]
    per_rank = -(-len(rows) // d.world)  # ceil: the largest rank share
    passes = -(-per_rank // batch_size)
    sums = torch.zeros(3, dtype=torch.float64)
    counted = 0  # held-out examples evaluated on this rank (a cross-tokenizer run skips some)
    model = run.model
    core = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    core.eval()
    with torch.no_grad(), torch.autocast(run.device.type, torch.bfloat16, enabled=run.bf16):
        for b in range(passes):
            idx = mine[b * batch_size : (b + 1) * batch_size]
            n = len(idx)
            batch = reader.take(idx if n else rows[:1])
            if data.transform is not None:  # cross-tokenizer: align, collate, weigh by what aligned
                batch = data.transform(batch)
                kept = batch[ALIGNED]
                n = len(kept) if n else 0
                out = core(aligned=collate_aligned(kept or [empty_example()], batch[PAD_ID]).to(run.device))
                counted += n
                sums += out.double().cpu() * n
                continue
            out = core(**{k: torch.from_numpy(batch[k]).to(run.device) for k in data.keys})
            counted += n
            sums += out.double().cpu() * n
    core.train()
    *totals, total = distributed.all_sum([*sums.tolist(), float(counted)], d)
    loss, ce, kd = (v / max(total, 1.0) for v in totals)
    return {"eval_loss": loss, "eval_ce": ce, "eval_kd": kd}
