"""Per-example memorization features on hand-set toys and a tiny random GPT-NeoX (no vLLM)."""
from __future__ import annotations

import math
import random
import string
import zlib

import numpy as np
import pytest
import torch

from kdstream.analysis.features import (
    min_k_percent,
    model_features,
    perplexity,
    text_features,
    token_logprobs,
    topk_kl,
    zlib_entropy,
    zlib_ratio,
)
from kdstream.distill.losses import dense_kd_loss


@pytest.fixture(scope="module")
def tiny_lm():
    """Random GPT-NeoX: vocab 64, hidden 64, 1 layer, 1 head (built from config, CPU, fp32)."""
    from benchmarks.fixtures import tiny_gpt_neox

    return tiny_gpt_neox(64, hidden=64, layers=1, heads=1, intermediate=128, positions=32)


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 64, (5, 12), generator=g)  # (S=5, L=12)


def _reference_logprobs(model, ids):
    """log_softmax of the full logits, gathered at the next token by hand: (S, L-1)."""
    model.eval()
    with torch.no_grad():
        logp = model(input_ids=ids).logits.float().log_softmax(-1)  # (S, L, V)
    return logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1).numpy()


# ---- zlib entropy -------------------------------------------------------------------------------

def test_zlib_entropy_is_compressed_utf8_length():
    assert zlib_entropy("") == 8  # 2-byte header + empty final block + 4-byte adler32
    text = "naïve café ∑"
    assert zlib_entropy(text) == len(zlib.compress(text.encode("utf-8")))


def test_repetitive_text_has_lower_zlib_entropy_than_random_text():
    rng = random.Random(0)
    noise = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(400))
    assert zlib_entropy("the cat sat. " * 31) < zlib_entropy(noise) / 4


# ---- perplexity, Min-K%, zlib ratio ------------------------------------------------------------

LP = np.log(np.array([[0.5, 0.25, 0.125], [1.0, 0.5, 0.5]]))  # (S=2, L-1=3)


def test_perplexity_hand_values():
    # row 0: exp(-(log .5 + log .25 + log .125)/3) = (2*4*8)^(1/3) = 4; row 1: (1*2*2)^(1/3)
    np.testing.assert_allclose(perplexity(LP), [4.0, 4 ** (1 / 3)])
    np.testing.assert_allclose(perplexity(LP, start=1), [math.sqrt(32), 2.0])
    np.testing.assert_allclose(perplexity(LP, start=0, stop=1), [2.0, 1.0])
    with pytest.raises(ValueError, match="no positions"):
        perplexity(LP, start=3)


def test_min_k_percent_hand_values():
    lp = np.array([[-1.0, -5.0, -2.0, -4.0, -3.0]])
    assert min_k_percent(lp, k=0.4)[0] == pytest.approx(-4.5)  # floor(0.4*5)=2 lowest: -5, -4
    assert min_k_percent(lp, k=0.2)[0] == pytest.approx(-5.0)
    assert min_k_percent(lp, k=0.1)[0] == pytest.approx(-5.0)  # at least one token
    assert min_k_percent(lp, k=1.0)[0] == pytest.approx(-3.0)  # the mean log-prob
    with pytest.raises(ValueError):
        min_k_percent(lp, k=0.0)


def test_zlib_ratio_is_log_ppl_over_zlib_bytes():
    np.testing.assert_allclose(zlib_ratio(np.array([math.e ** 2, 1.0]), np.array([4, 10])), [0.5, 0.0])


# ---- top-k KL ---------------------------------------------------------------------------------

def _toy():
    """2 examples, V = 5: teacher probs set by hand, model uniform / peaked."""
    teacher = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625],
                            [0.0625, 0.0625, 0.125, 0.25, 0.5]]).log()  # (2, 5) log-probs
    model = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 0.0, math.log(4.0)]])  # (2, 5) logits: uniform; [.125]*4 + [.5]
    return teacher, model


def test_topk_kl_hand_value_with_tail_bucket():
    teacher, model = _toy()
    vals, ids = teacher.topk(2, -1)  # row 0: ids 0, 1 (.5, .25; tail .25); row 1: ids 4, 3 (.5, .25; tail .25)
    got = topk_kl(model, ids, vals)
    row0 = 0.5 * math.log(0.5 / 0.2) + 0.25 * math.log(0.25 / 0.2) + 0.25 * math.log(0.25 / 0.6)
    row1 = 0.5 * math.log(0.5 / 0.5) + 0.25 * math.log(0.25 / 0.125) + 0.25 * math.log(0.25 / 0.375)
    torch.testing.assert_close(got, torch.tensor([row0, row1]), rtol=1e-5, atol=1e-6)
    # logits and log-probs of the model give the same value; merging classes never raises the KL
    torch.testing.assert_close(topk_kl(model.log_softmax(-1), ids, vals), got)
    dense = (teacher.exp() * (teacher - model.log_softmax(-1))).sum(-1)
    assert (got <= dense + 1e-6).all()


def test_topk_kl_with_k_equal_v_is_dense_kl():
    g = torch.Generator().manual_seed(3)
    teacher_logits, model_logits = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    ids = torch.stack([torch.randperm(5, generator=g) for _ in range(6)])  # k = V, shuffled order
    vals = teacher_logits.log_softmax(-1).gather(-1, ids)
    dense = (teacher_logits.softmax(-1) * (teacher_logits.log_softmax(-1) - model_logits.log_softmax(-1))).sum(-1)
    got = topk_kl(model_logits, ids, vals)
    torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.mean(), dense_kd_loss(model_logits, teacher_logits), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(got).all()


def test_topk_kl_of_a_model_against_itself_is_zero():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 7, generator=g)
    vals, ids = logits.log_softmax(-1).topk(3, -1)
    torch.testing.assert_close(topk_kl(logits, ids, vals), torch.zeros(4), atol=1e-6, rtol=0)


# ---- model passes ----------------------------------------------------------------------------

def test_token_logprobs_equal_log_softmax_gathered_by_hand(tiny_lm, ids):
    tiny_lm.train()
    got = token_logprobs(tiny_lm, ids, batch_size=2)  # batches of 2, 2, 1
    assert got.shape == (5, 11) and got.dtype == np.float32
    assert tiny_lm.training  # mode restored
    np.testing.assert_allclose(got, _reference_logprobs(tiny_lm, ids), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(token_logprobs(tiny_lm, ids.numpy(), batch_size=16), got)  # numpy input too


def test_model_features_match_their_definitions(tiny_lm, ids):
    ref = _reference_logprobs(tiny_lm, ids)
    f = model_features(tiny_lm, ids, prefix_len=4, batch_size=2)
    assert set(f) == {"ppl", "suffix_ppl", "min_k"}
    np.testing.assert_allclose(f["ppl"], np.exp(-ref.mean(1)), rtol=1e-5)
    np.testing.assert_allclose(f["suffix_ppl"], np.exp(-ref[:, 3:].mean(1)), rtol=1e-5)  # predicts tokens 4..11
    np.testing.assert_allclose(f["min_k"], np.sort(ref, 1)[:, :2].mean(1), rtol=1e-5)  # floor(0.2 * 11) = 2
    short = model_features(tiny_lm, ids, prefix_len=4, suffix_len=3)
    np.testing.assert_allclose(short["suffix_ppl"], np.exp(-ref[:, 3:6].mean(1)), rtol=1e-5)  # tokens 4, 5, 6
    with pytest.raises(ValueError):
        model_features(tiny_lm, ids, prefix_len=10, suffix_len=5)


def test_model_features_teacher_kl(tiny_lm, ids):
    """teacher_kl = mean over positions of topk_kl, with a second tiny model's top-k as teacher."""
    from benchmarks.fixtures import tiny_gpt_neox

    teacher = tiny_gpt_neox(64, seed=1, hidden=64, layers=1, heads=1, intermediate=128, positions=32).eval()
    with torch.no_grad():
        t_logp = teacher(input_ids=ids).logits[:, :-1].float().log_softmax(-1)  # (5, 11, 64)
        m_logits = tiny_lm.eval()(input_ids=ids).logits[:, :-1].float()
    vals, top = t_logp.topk(8, -1)  # store-style top-8: (5, 11, 8)
    f = model_features(tiny_lm, ids, prefix_len=4, topk_ids=top.numpy(), topk_logprobs=vals.numpy(), batch_size=2)
    want = topk_kl(m_logits.reshape(-1, 64), top.reshape(-1, 8), vals.reshape(-1, 8)).reshape(5, 11).mean(-1)
    np.testing.assert_allclose(f["teacher_kl"], want.double().numpy(), rtol=1e-5, atol=1e-7)
    assert (f["teacher_kl"] > 0).all()
    same = model_features(teacher, ids, prefix_len=4, topk_ids=top, topk_logprobs=vals)  # teacher vs itself
    np.testing.assert_allclose(same["teacher_kl"], 0.0, atol=1e-5)


class _ByteTokenizer:
    """Stand-in for a HF tokenizer: id i decodes to chr(i)."""

    def batch_decode(self, rows, skip_special_tokens=False):
        return ["".join(chr(i) for i in row) for row in rows]


def test_text_features_zlib_of_decoded_text():
    rows = np.array([[ord(c) for c in "abababababab"], [ord(c) for c in "q9Zx!m2Kp7Lw"]])
    out = text_features(_ByteTokenizer(), rows)
    got = out["zlib_entropy"]
    assert got.dtype == np.int64
    assert got.tolist() == [zlib_entropy("abababababab"), zlib_entropy("q9Zx!m2Kp7Lw")]
    assert got[0] < got[1]
    assert out["text_bytes"].tolist() == [12, 12]


def test_text_features_with_a_real_tokenizer(tokenizer):
    text = "def add(a, b):\n    return a + b\n"
    row = tokenizer(text)["input_ids"]
    got = text_features(tokenizer, np.array([row]))
    assert got["zlib_entropy"][0] == zlib_entropy(tokenizer.decode(row))
    assert got["text_bytes"][0] == len(text.encode()) == len(tokenizer.decode(row).encode())


# ---- all three on one fixed example, by hand ------------------------------------------------------

class _FixedLM(torch.nn.Module):
    """A 'model' whose next-token distribution at each position is set by hand (V = 4, L = 4),
    whatever the input: log-probs as logits, shape (B, L, V)."""

    PROBS = torch.tensor([[0.25, 0.5, 0.125, 0.125],  # position 0 predicts token 1: p = 1/2
                          [0.25, 0.25, 0.25, 0.25],  # position 1 predicts token 2: p = 1/4
                          [0.125, 0.125, 0.25, 0.5],  # position 2 predicts token 3: p = 1/2
                          [0.25, 0.25, 0.25, 0.25]])  # position 3: after the example, dropped

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the pass a device

    def forward(self, input_ids):
        logits = self.PROBS.log().expand(input_ids.shape[0], -1, -1)
        return type("Out", (), {"logits": logits})()


class _LetterTokenizer:
    def batch_decode(self, rows, skip_special_tokens=False):
        return ["".join("abcd"[i] for i in row) for row in rows]


def test_zlib_perplexity_and_kl_of_a_fixed_example_by_hand():
    ids = np.array([[0, 1, 2, 3]])  # text "abcd"
    # the teacher's stored top-1 at each position: token, probability (the rest is the tail)
    top_ids = np.array([[[1], [2], [3]]])  # (S=1, L-1=3, k=1)
    top_lp = np.log(np.array([[[0.75], [0.5], [0.5]]]), dtype=np.float32)
    f = model_features(_FixedLM(), ids, prefix_len=2, suffix_len=2, topk_ids=top_ids, topk_logprobs=top_lp)
    z = text_features(_LetterTokenizer(), ids)["zlib_entropy"]

    assert f["ppl"][0] == pytest.approx(16 ** (1 / 3))  # exp(-(ln 1/2 + ln 1/4 + ln 1/2) / 3) = (2·4·2)^(1/3)
    assert f["suffix_ppl"][0] == pytest.approx(math.sqrt(8))  # tokens 2, 3: (4·2)^(1/2)
    assert f["min_k"][0] == pytest.approx(math.log(0.25))  # floor(0.2·3) = 0 -> the single lowest
    # KL(teacher ‖ model) on {top-1, tail}: position 0: (.75 | .5), 1: (.5 | .25), 2: (.5 | .5) -> 0
    kl0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl1 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert f["teacher_kl"][0] == pytest.approx((kl0 + kl1 + 0.0) / 3, rel=1e-6)
    # zlib("abcd"): 2-byte header, a fixed-Huffman block of 4 literals (3 + 4·8 + 7 bits -> 6 bytes),
    # 4-byte adler32
    assert z[0] == 12
    assert zlib_ratio(f["ppl"], z)[0] == pytest.approx(math.log(16) / 3 / 12)
