"""kdstream.torch.KDLoss computes what distill's Objective computes (value and gradients), on
both paths, and names a shape mismatch in one line."""
from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.fixtures import tiny_gpt_neox
from kdstream.distill.objective import Objective
from kdstream.torch import KDLoss

V, L, B, K = 96, 9, 3, 5


def _net(seed=0):
    return tiny_gpt_neox(V, seed=seed, hidden=64, layers=1, heads=1, intermediate=64)


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L - 1, V, generator=g) * 3
    lp, ids = torch.log_softmax(logits, -1).topk(K, -1)
    return {"input_ids": torch.randint(0, V, (B, L), generator=g), "topk_ids": ids, "topk_logprobs": lp}


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,tail,temperature,alpha_ce", [
    ("forward_kl", "bucket", 1.0, 0.0), ("reverse_kl", "renormalize", 2.0, 0.0), ("jsd", "bucket", 1.5, 0.3),
])
@pytest.mark.parametrize("fused", [False, True])
def test_equals_distill_objective(kind, tail, temperature, alpha_ce, fused):
    batch = _batch()
    ref_net = _net()
    ref = Objective(ref_net, loss=kind, temperature=temperature, tail=tail, beta=0.5, alpha_ce=alpha_ce, chunk=7)
    want = ref(batch["input_ids"], batch["topk_ids"], batch["topk_logprobs"])
    want[0].backward()

    net = _net()
    kd = KDLoss(kind, temperature=temperature, tail=tail, alpha_ce=alpha_ce, chunk=5)
    if fused:
        out = net(input_ids=batch["input_ids"], logits_to_keep=1, output_hidden_states=True)
        loss = kd.from_hidden(out.hidden_states[-1], net.get_output_embeddings(), batch)
    else:
        loss = kd(net(input_ids=batch["input_ids"]).logits, batch)
    loss.backward()
    torch.testing.assert_close(loss.detach(), want[0].detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(kd.last, want.detach(), atol=1e-6, rtol=1e-6)
    g, w = _grads(net), _grads(ref_net)
    assert g.keys() == w.keys()
    for name in g:
        torch.testing.assert_close(g[name], w[name], atol=1e-6, rtol=1e-5)


def test_accepts_logits_with_or_without_the_last_position():
    batch, net = _batch(), _net()
    logits = net(input_ids=batch["input_ids"]).logits  # (B, L, V)
    kd = KDLoss()
    assert torch.equal(kd(logits, batch), kd(logits[:, :-1], batch))


def test_mismatches_are_named():
    batch, kd = _batch(), KDLoss()
    with pytest.raises(ValueError, match="3x7 positions but the batch's input_ids are 3x9"):
        kd(torch.randn(B, L - 2, V), batch)
    with pytest.raises(ValueError, match=r"topk_ids \(3, 8, 5\) and topk_logprobs \(3, 8, 4\)"):
        kd(torch.randn(B, L, V), {**batch, "topk_logprobs": batch["topk_logprobs"][..., :4]})
    with pytest.raises(ValueError, match="no topk_ids or topk_logprobs .*remove_unused_columns=False"):
        kd(torch.randn(B, L, V), {"input_ids": batch["input_ids"]})
    with pytest.raises(ValueError, match="lists token id .* 10 output classes"):
        kd(torch.randn(B, L, 10), batch)
    with pytest.raises(ValueError, match="hidden size 32 != lm_head input size 64"):
        kd.from_hidden(torch.randn(B, L, 32), _net().get_output_embeddings(), batch)
    with pytest.raises(ValueError, match="KDLoss kind 'kl'"):
        KDLoss("kl")
    assert KDLoss("ce")(torch.randn(B, L, V), {"input_ids": batch["input_ids"]}).ndim == 0


def test_module_is_copyable_and_has_no_parameters():
    kd = KDLoss("jsd", beta=0.2)
    assert list(kd.parameters()) == [] and copy.deepcopy(kd).beta == 0.2
