"""The fused, chunked loss gives the plain path's values and gradients."""
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from kdstream.distill.objective import Objective


@pytest.mark.parametrize("loss", ["ce", "forward_kl", "reverse_kl", "jsd"])
def test_chunked_equals_plain(loss):
    torch.manual_seed(0)
    V, B, L, k = 97, 3, 12, 5
    net = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=32, tie_word_embeddings=False))
    ids = torch.randint(0, V, (B, L))
    teacher = torch.log_softmax(torch.randn(B, L - 1, V) * 3, -1)
    top = teacher.topk(k, -1)
    results = []
    for chunk in (None, 7):  # 33 positions: chunks of 7 leave a remainder
        obj = Objective(net, loss=loss, temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.25, chunk=chunk)
        net.zero_grad()
        out = obj(ids, top.indices, top.values) if loss != "ce" else obj(ids)
        out[0].backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    (plain, g_plain), (fused, g_fused) = results
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    for name in g_plain:
        torch.testing.assert_close(g_fused[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)
