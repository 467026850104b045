"""Several conversations packed into one sequence (``distill --batching packed``).

A batch of a conversation store is B examples padded to the store's L tokens. Packing lays them
end to end into as few rows of at most L tokens as first-fit-decreasing finds, each cut after its
last target's next token (what follows carries no loss). ``position_ids`` restart at 0 with every
conversation: transformers then builds a block-diagonal causal mask (no attention across
conversations; ``masking_utils.find_packed_sequence_indices``, needs attention_mask None and no
cache). The row that would predict one conversation's first token from the previous one's last
gets ``topk_len`` 0: no loss. The loss runs over the same target rows as unpacked, so the two give
the same loss and gradients (tests/distill/test_conversation_batch.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

ROW_KEYS = ("topk_ids", "topk_logprobs", "topk_len")  # (B, L-1, ...): one row per predicting position


def _first_fit(sizes: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``sizes`` in bins of at most ``capacity``, largest first (stable by index)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda j: -sizes[j]):
        for b, left in enumerate(room):
            if sizes[i] <= left:
                bins[b].append(i)
                room[b] -= sizes[i]
                break
        else:
            bins.append([i])
            room.append(capacity - sizes[i])
    return [sorted(b) for b in bins]


def pack(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """A padded conversation batch (input_ids (B, L), topk_len (B, L-1), optional topk_ids /
    topk_logprobs (B, L-1, k)) → the same conversations packed: (B', L') of each, plus
    position_ids (B', L'); L' is the longest packed row."""
    ids, lens = batch["input_ids"], batch["topk_len"]
    L = ids.shape[1]
    # each conversation's last target row (row indices weighted 1..L-1: argmax is the last; 0 when none)
    last = ((lens > 0) * torch.arange(1, L, device=ids.device)).argmax(1)
    sizes = (last + 2).tolist()  # tokens each conversation needs: up to its last target's next token
    bins = _first_fit(sizes, L)
    width = max(sum(sizes[i] for i in b) for b in bins)
    out = {"input_ids": ids.new_zeros((len(bins), width)),
           "position_ids": torch.zeros((len(bins), width), dtype=torch.long, device=ids.device)}
    for key in ROW_KEYS:
        if key in batch:
            v = batch[key]
            fill = float("-inf") if key == "topk_logprobs" else 0
            out[key] = v.new_full((len(bins), width, *v.shape[2:]), fill)  # one spare row, cut below
    for r, members in enumerate(bins):
        at = 0
        for i in members:
            n = sizes[i]
            out["input_ids"][r, at : at + n] = ids[i, :n]
            out["position_ids"][r, at : at + n] = torch.arange(n, device=ids.device)
            for key in ROW_KEYS:
                if key in batch:
                    out[key][r, at : at + n - 1] = batch[key][i, : n - 1]  # row at + n - 1: the junction, no loss
            at += n
        out["position_ids"][r, at:] = torch.arange(width - at, device=ids.device) + (out["position_ids"][r, at - 1] + 1)
    for key in ROW_KEYS:
        if key in out:
            out[key] = out[key][:, : width - 1]
    return out
