"""Packed conversations give the loss and gradients of the same conversations padded."""
from __future__ import annotations

import pytest
import torch
from test_objective import V, neox

from kdstream.distill.conversation_batch import _first_fit, pack
from kdstream.distill.objective import Objective


def padded_batch(lengths: list[int], L: int = 16, k: int = 4):
    torch.manual_seed(5)
    B = len(lengths)
    ids = torch.zeros(B, L, dtype=torch.long)
    topk_len = torch.zeros(B, L - 1, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, V, (n,))
        topk_len[i, : n - 1] = (torch.rand(n - 1) < 0.6).long() * k
        topk_len[i, n - 2] = k  # the last row of each conversation is a target
    teacher = torch.log_softmax(torch.randn(B, L - 1, V) * 3, -1)
    lp, top = teacher.topk(k, -1)
    return {"input_ids": ids, "topk_len": topk_len, "topk_ids": top, "topk_logprobs": lp}


def test_first_fit_fills_bins_largest_first():
    assert _first_fit([5, 9, 3, 7], 10) == [[1], [2, 3], [0]]  # 9, then 7, then 5 alone, 3 beside 7


@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("loss", ["forward_kl", "ce"])
def test_packed_equals_padded(loss, chunk):
    batch = padded_batch([6, 9, 4, 12, 3])
    packed = pack(batch)
    assert packed["input_ids"].shape[0] < 5  # several conversations share a row
    assert int((packed["topk_len"] > 0).sum()) == int((batch["topk_len"] > 0).sum())
    results = []
    for b in (batch, packed):
        obj = Objective(neox(), loss=loss, temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.0, chunk=chunk)
        obj.net.config.use_cache = False
        out = obj(**b)
        out[0].backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in obj.named_parameters()}))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=1e-5)
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-5), n
