"""The loss on the held-out rows (``--eval-examples``), evaluated during training, and the
student's bits per byte on them: a figure that does not depend on the tokenizer, so students with
different tokenizers compare on the same text.

Bits per byte = the student's total CE in nats over the held-out positions ÷ ln 2 ÷ the UTF-8
bytes of the tokens those positions predict (tokens 1.. of each example). Same tokenizer as the
data: the bytes come from the student's byte table (text/token_bytes.py); a cross-tokenizer run
scores the student's own tokens of each example's text, with their byte spans from the alignment.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdstream.distill.run_state import Run, TrainData


def held_out_loss(run: Run, data: TrainData) -> dict:
    """Mean [loss, ce, kd] over the held-out rows, split across ranks (every rank runs the same
    number of forward passes, for FSDP), without gradients; the model is left in train mode.
    Also the student's CE as nats per token and bits per byte over the held-out positions (None
    without a byte table: a tokenizer that is neither byte-level BPE nor SentencePiece-style)."""
    import numpy as np
    import torch

    from kdstream.distill import distributed
    from kdstream.distill.aligned_batch import collate_aligned, empty_example
    from kdstream.distill.cross_tokenizer import ALIGNED, PAD_ID
    from kdstream.distill.loader import BlockReader
    from kdstream.text.token_bytes import bits_per_byte

    rows, batch_size, d = data.held_out, run.opts.batch_size, run.d
    reader = BlockReader(data.open_source(), run.opts.shuffle_block, data.keys)
    mine = np.array_split(rows, d.world)[d.rank]
    per_rank = -(-len(rows) // d.world)  # ceil: the largest rank share
    passes = -(-per_rank // batch_size)
    sums = torch.zeros(3, dtype=torch.float64)
    counted = 0  # held-out examples evaluated on this rank (a cross-tokenizer run skips some)
    nats = tokens = num_bytes = 0.0  # the student's CE summed over predicted positions; their count; their bytes
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
                aligned = collate_aligned(kept or [empty_example()], batch[PAD_ID])
                out = core(aligned=aligned.to(run.device)).double().cpu()
                counted += n
                sums += out * n
                if n:  # ce: the mean over the batch's learned next tokens (a conversation's answers)
                    real = float(aligned.target_mask[:, 1:].sum())
                    nats, tokens = nats + float(out[1]) * real, tokens + real
                    num_bytes += sum(int(e.student_bytes[1:][e.target_mask()[1:]].sum()) for e in kept)
                continue
            out = core(**{k: torch.from_numpy(batch[k]).to(run.device) for k in data.keys}).double().cpu()
            counted += n
            sums += out * n
            if n:  # ce: the mean over the n × (L-1) positions, or a conversation store's target rows
                at = batch["topk_len"] > 0 if "topk_len" in batch else np.ones(batch["input_ids"][:, 1:].shape, bool)
                positions = int(at.sum())
                nats, tokens = nats + float(out[1]) * positions, tokens + positions
                if data.byte_lengths is not None:
                    num_bytes += int(data.byte_lengths[batch["input_ids"][:, 1:][at]].sum())
    core.train()
    *totals, total, nats, tokens, num_bytes = distributed.all_sum(
        [*sums.tolist(), float(counted), nats, tokens, num_bytes], d)
    loss, ce, kd = (v / max(total, 1.0) for v in totals)
    have_bytes = data.transform is not None or data.byte_lengths is not None
    return {"eval_loss": loss, "eval_ce": ce, "eval_kd": kd,
            "eval_nats_per_token": nats / tokens if tokens else None,
            "eval_bits_per_byte": float(bits_per_byte(nats, num_bytes)) if have_bytes and num_bytes > 0 else None,
            "eval_tokens": int(tokens), "eval_bytes": int(num_bytes) if have_bytes else None}
