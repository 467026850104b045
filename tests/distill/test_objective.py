"""The fused output layer + loss (Objective with chunk=c) gives the plain path's values and gradients."""
import numpy as np
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.fixtures import tiny_gpt_neox
from kdstream.distill.fused_head import fused_head_loss
from kdstream.distill.losses import CE_SAMPLED, KD_LOSSES, TAILS
from kdstream.distill.objective import Objective
from kdstream.storage.encoding import decode_samples, draw_samples

V, B, L, H = 97, 3, 12, 32  # N = 33 positions: chunks of 7 leave a remainder of 5


def neox(bias: bool = False) -> nn.Module:
    net = tiny_gpt_neox(V, hidden=H, layers=1, heads=2, intermediate=64, positions=32)
    if bias:  # GPT-NeoX has no head bias; a biased head checks grad_bias
        net.lm_head = nn.Linear(H, V, bias=True)
        nn.init.normal_(net.lm_head.bias)
    return net


def llama_tied() -> nn.Module:
    """SmolLM2's shape in miniature: a Llama whose lm_head is the input embedding."""
    torch.manual_seed(0)
    net = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=H, num_hidden_layers=1, num_attention_heads=2,
                                       num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
                                       tie_word_embeddings=True))
    assert net.lm_head.weight is net.model.embed_tokens.weight
    return net


def targets(loss: str, k: int = 5):
    """input_ids (B, L) and the teacher's (B, L-1, k) view: top-k, or a sampled store's (64 draws)."""
    torch.manual_seed(1)
    ids = torch.randint(0, V, (B, L))
    teacher = torch.log_softmax(torch.randn(B, L - 1, V) * 3, -1)
    top = teacher.topk(k, -1)
    if loss != CE_SAMPLED:
        return ids, top.indices, top.values
    drawn = draw_samples(top.indices.numpy(), top.values.numpy(), 64, k, np.random.default_rng(0))
    topk_ids, logprobs, _ = decode_samples(drawn["sample_ids"], drawn["sample_counts"], drawn["sample_tail_count"], 64)
    return ids, torch.from_numpy(topk_ids), torch.from_numpy(logprobs)


def run(net, chunk, loss="forward_kl", tail="bucket", temperature=2.0, alpha_ce=0.25, k=5):
    """(out [loss, ce, kd], {parameter name: grad or None}) after one backward of out[0]."""
    ids, topk_ids, topk_lp = targets(loss, k)
    obj = Objective(net, loss=loss, temperature=temperature, tail=tail, beta=0.5, alpha_ce=alpha_ce, chunk=chunk)
    net.zero_grad(set_to_none=True)
    out = obj(ids) if loss == "ce" else obj(ids, topk_ids, topk_lp)
    out[0].backward()
    return out.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}


def assert_same(a, b, rtol=1e-5, atol=1e-6):
    (out_a, g_a), (out_b, g_b) = a, b
    torch.testing.assert_close(out_a, out_b, rtol=rtol, atol=atol)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        if g_b[name] is None:
            assert g_a[name] is None, name
        else:
            torch.testing.assert_close(g_a[name], g_b[name], rtol=10 * rtol, atol=atol, msg=name)


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("loss", ["ce", *KD_LOSSES, CE_SAMPLED])
def test_fused_equals_plain_for_every_loss_and_tail(loss, tail):
    net = neox()
    assert_same(run(net, 7, loss, tail), run(net, None, loss, tail))


@pytest.mark.parametrize(("temperature", "alpha_ce"), [(1.0, 0.0), (0.5, 1.0), (4.0, 0.6)])
def test_fused_equals_plain_across_temperature_and_ce_mix(temperature, alpha_ce):
    net = neox()
    for loss in ("forward_kl", "jsd"):
        assert_same(run(net, 7, loss, temperature=temperature, alpha_ce=alpha_ce),
                    run(net, None, loss, temperature=temperature, alpha_ce=alpha_ce))


def test_full_vocabulary_targets_take_the_exact_tail_path():
    """k = V: every row's top-k holds all the mass (the heavy-row logsumexp path, empty tail)."""
    net = neox()
    for loss in ("forward_kl", "reverse_kl"):
        assert_same(run(net, 7, loss, k=V), run(net, None, loss, k=V))


@pytest.mark.parametrize("chunk", [1, 7, 11, 33, 1000])
def test_any_chunk_size_even_or_not(chunk):
    net = neox()
    assert_same(run(net, chunk), run(net, None))


def test_tied_embeddings_accumulate_both_uses_into_the_shared_weight():
    net = llama_tied()
    fused, plain = run(net, 7), run(net, None)
    assert "lm_head.weight" not in plain[1]  # one shared parameter, listed once
    assert_same(fused, plain)  # the plain gradient holds both parts: the embedding lookup's and the head's
    net.lm_head.weight.requires_grad_(False)  # a frozen shared weight gets neither part
    assert run(net, 7)[1]["model.embed_tokens.weight"] is None


def test_head_bias_gets_its_gradient():
    net = neox(bias=True)
    fused, plain = run(net, 7), run(net, None)
    assert fused[1]["lm_head.bias"].abs().sum() > 0
    assert_same(fused, plain)


def test_frozen_head_or_frozen_body():
    net = neox()
    net.lm_head.weight.requires_grad_(False)
    fused, plain = run(net, 7), run(net, None)
    assert fused[1]["lm_head.weight"] is None
    assert_same(fused, plain)
    net.lm_head.weight.requires_grad_(True)
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("lm_head"))
    fused, plain = run(net, 7), run(net, None)
    assert all(g is None for n, g in fused[1].items() if not n.startswith("lm_head"))
    assert_same(fused, plain)


def test_bf16_autocast_matches_the_plain_autocast_path():
    """The matmul in bf16 (as autocast's nn.Linear), the loss in fp32 from it."""
    net = neox()
    ids, topk_ids, topk_lp = targets("forward_kl")
    with torch.autocast("cpu", torch.bfloat16):
        assert net.base_model(input_ids=ids).last_hidden_state.dtype == torch.float32  # the final norm's output
    results = []
    for chunk in (7, None):
        obj = Objective(net, loss="forward_kl", temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.25, chunk=chunk)
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16):
            out = obj(ids, topk_ids, topk_lp)
        assert out.dtype == torch.float32
        out[0].backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    (fused, g_fused), (plain, g_plain) = results
    torch.testing.assert_close(fused, plain, rtol=1e-3, atol=1e-4)
    for name in g_plain:
        assert g_fused[name].dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(g_fused[name].flatten(), g_plain[name].flatten(), dim=0)
        assert cos > 0.999, name


def test_without_grad_it_is_a_chunked_forward():
    net = neox()
    ids, topk_ids, topk_lp = targets("forward_kl")
    with torch.no_grad():
        fused = Objective(net, loss="jsd", temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.0, chunk=7)(
            ids, topk_ids, topk_lp)
        plain = Objective(net, loss="jsd", temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.0, chunk=None)(
            ids, topk_ids, topk_lp)
    assert not fused.requires_grad
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_gradient_is_scaled_by_the_incoming_one_and_only_element_0_counts():
    torch.manual_seed(0)
    hidden = torch.randn(10, 4, requires_grad=True)
    weight = torch.randn(6, 4, requires_grad=True)
    t = torch.randint(0, 6, (10,))

    def loss_fn(logits, rows):  # [CE, a logged value]
        ce = torch.nn.functional.cross_entropy(logits, t[rows])
        return torch.stack([ce, logits.mean()])

    out = fused_head_loss(hidden, weight, None, loss_fn, 3)
    (out * torch.tensor([3.0, 100.0])).sum().backward()
    ref_h, ref_w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    ref = torch.nn.functional.cross_entropy(ref_h @ ref_w.T, t)
    (3.0 * ref).backward()
    torch.testing.assert_close(out[0], ref.detach())
    torch.testing.assert_close(hidden.grad, ref_h.grad)
    torch.testing.assert_close(weight.grad, ref_w.grad)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out = fused_head_loss(hidden, weight, None, loss_fn, 3)
        out[0].backward(retain_graph=True)
        out[0].backward()


def test_loss_chunk_auto_and_logit_postprocessing():
    """auto: a chunk's fp32 logits within 64 MiB; a student that post-processes its logits (here
    Gemma-2-style soft-capping) gets the plain path under auto, and an explicit chunk is refused."""
    from kdstream.distill.fused_head import auto_chunk
    from kdstream.distill.options import parse_loss_chunk
    from kdstream.distill.trainer import fused_chunk
    from kdstream.errors import KdError

    assert auto_chunk(50304) == 333 and auto_chunk(4096) == 4096 and auto_chunk(10**9) == 1
    assert [parse_loss_chunk(v) for v in ("auto", "0", "512", None)] == ["auto", None, 512, "auto"]
    with pytest.raises(KdError, match="--loss-chunk"):
        parse_loss_chunk("big")
    net = tiny_gpt_neox(512, seed=None, hidden=64, layers=1, heads=1, intermediate=128)
    assert fused_chunk("auto", net) == auto_chunk(512) == 32768
    assert fused_chunk(100, net) == 100 and fused_chunk(None, net) is None
    net.config.final_logit_softcapping = 30.0
    assert fused_chunk("auto", net) is None
    with pytest.raises(KdError, match="post-processes its logits"):
        fused_chunk(100, net)
