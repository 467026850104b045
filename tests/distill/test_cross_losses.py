"""kdstream.distill.cross_losses: ALM and the exact-map loss against the token-level losses they
generalise, the teacher's chunk log-likelihoods against its own forward pass, extreme values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdstream.distill.aligned_batch import aligned_example, collate_aligned, teacher_chunk_logprobs
from kdstream.distill.cross_losses import alm_loss, binary_divergence, exact_map_loss, log1mexp
from kdstream.distill.losses import kd_loss
from kdstream.text.align import Aligner, Alignment
from kdstream.text.tokenizers import train_bpe_tokenizer


def _ids(tok, text):
    return np.asarray(tok(text, add_special_tokens=False)["input_ids"], np.int64)


def _fake_teacher(n, v, k, seed):
    """Store-like rows for n tokens: target_logprob (n-1,), topk_ids (n-1, k), topk_logprobs (n-1, k)."""
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(n - 1, v, generator=g) * 3, -1)
    vals, ids = logp.topk(k, -1)
    return logp, ids.numpy(), vals.numpy()


@pytest.fixture(scope="module")
def other(tmp_path_factory, docs):
    """A student tokenizer unlike the session one: another vocabulary size."""
    return train_bpe_tokenizer(docs, 900, tmp_path_factory.mktemp("other"))


def _binary_kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_same_tokenizer_reduces_to_token_level_losses(tokenizer, docs):
    aligner = Aligner(tokenizer, tokenizer)
    vmap = aligner.vocab_map()
    v, k = len(tokenizer.get_vocab()), 8
    examples, refs = [], []
    for i, text in enumerate([docs[0][:300], docs[1][:200]]):  # two lengths: padding in the batch
        ids = _ids(tokenizer, text)
        a = aligner.align(ids)
        logp, topk_ids, topk_lp = _fake_teacher(len(ids), v, k, seed=i)
        target = logp.gather(-1, torch.from_numpy(ids[1:, None])).squeeze(-1).numpy()
        examples.append(aligned_example(a, target, topk_ids, topk_lp, vmap))
        refs.append((ids, target, topk_ids, topk_lp))
    batch = collate_aligned(examples)
    b, width = batch.input_ids.shape
    assert b == 2 and width == max(len(r[0]) for r in refs) and batch.attention_mask.sum() == sum(len(r[0]) for r in refs)
    logits = (torch.randn(b, width, v, generator=torch.Generator().manual_seed(5)) * 2).requires_grad_()

    # ALM, τ = 1: the mean binary KL of exp(teacher target log-prob) vs the student's prob of that token
    direct = []
    for i, (ids, target, _, _) in enumerate(refs):
        q = torch.softmax(logits.detach()[i, : len(ids) - 1].double(), -1).gather(-1, torch.from_numpy(ids[1:, None])).squeeze(-1)
        direct += [_binary_kl(math.exp(t), float(qq)) for t, qq in zip(target.astype(np.float64), q)]
    assert batch.chunk_usable.sum() == len(direct)
    got = alm_loss(logits, batch, temperature=1.0)
    assert got.item() == pytest.approx(np.mean(direct), rel=1e-4, abs=1e-6)

    # exact: kd_loss over every position of both examples
    rows = torch.cat([logits[i, : len(r[0]) - 1] for i, r in enumerate(refs)])
    ref = kd_loss(rows, torch.from_numpy(np.concatenate([r[2] for r in refs])),
                  torch.from_numpy(np.concatenate([r[3] for r in refs])))
    assert exact_map_loss(logits, batch).item() == pytest.approx(ref.item(), rel=1e-5)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        for tail in ("bucket", "renormalize"):
            ref = kd_loss(rows, torch.from_numpy(np.concatenate([r[2] for r in refs])),
                          torch.from_numpy(np.concatenate([r[3] for r in refs])), kind=kind, tail=tail,
                          temperature=2.0)
            got = exact_map_loss(logits, batch, kind=kind, tail=tail, temperature=2.0)
            assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_cross_tokenizer_losses_run_batched(tokenizer, other, docs):
    aligner = Aligner(tokenizer, other)
    vmap = aligner.vocab_map()
    v_t, v_s = len(tokenizer.get_vocab()), len(other.get_vocab())
    examples = []
    for i, text in enumerate(docs[2:5]):
        ids = _ids(tokenizer, text)[:64]
        a = aligner.align(ids)
        assert isinstance(a, Alignment)
        logp, topk_ids, topk_lp = _fake_teacher(len(ids), v_t, 8, seed=i)
        target = logp.gather(-1, torch.from_numpy(ids[1:, None])).squeeze(-1).numpy()
        e = aligned_example(a, target, topk_ids, topk_lp, vmap)
        # the teacher's chunk log-likelihood is the sum of its token log-probs over the chunk
        for c in np.flatnonzero(a.usable)[:10]:
            ta, tb = a.teacher_bounds[c]
            assert e.teacher_chunk_logprob[c] == pytest.approx(float(target[ta - 1:tb - 1].sum()), abs=1e-5)
        examples.append(e)
    batch = collate_aligned(examples)
    assert batch.teacher_chunk_logprob.shape == batch.chunk_usable.shape == (sum(len(e.usable) for e in examples),)
    logits = torch.randn(*batch.input_ids.shape, v_s, generator=torch.Generator().manual_seed(0)).requires_grad_()
    for loss in (alm_loss(logits, batch, temperature=2.0), alm_loss(logits, batch, kind="reverse_binary_kl"),
                 exact_map_loss(logits, batch)):
        assert torch.isfinite(loss) and loss > 0
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert grad[~batch.attention_mask].abs().sum() == 0  # padding gets nothing


def test_unmapped_teacher_mass_goes_to_the_tail():
    """An unmapped id (-1, -inf) drops out: the result is kd_loss with that entry's mass in the tail."""
    from kdstream.distill.aligned_batch import AlignedExample

    logits = torch.randn(1, 3, 10, generator=torch.Generator().manual_seed(0))
    ids = np.array([[2, -1, 5]])
    lp = np.log(np.array([[0.5, 0.2, 0.1]], np.float32))
    e = AlignedExample(np.array([1, 2, 3]), np.array([0, 1, 2]), np.zeros(3), np.array([False, True, True]),
                       np.array([1]), ids, np.where(ids >= 0, lp, -np.inf).astype(np.float32))
    got = exact_map_loss(logits, collate_aligned([e]))
    ref = kd_loss(logits[0, 1:2], torch.tensor([[2, 5]]), torch.log(torch.tensor([[0.5, 0.1]])))
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_a_repeated_student_id_counts_once_with_the_summed_probability():
    """Under --exact-map prefix several teacher tokens can land on one student token: its row lists
    it once with their summed probability, so exact_map_loss is kd_loss over distinct ids."""
    from kdstream.distill.aligned_batch import AlignedExample, merge_repeated_ids

    ids = np.array([[2, 5, 2, -1], [3, 4, -1, -1], [7, 7, 7, 1]])  # a row with nothing repeated between
    lp = np.log(np.array([[0.3, 0.1, 0.2, 0.1], [0.4, 0.3, 0.1, 0.1], [0.1, 0.2, 0.3, 0.05]], np.float32))
    merged_ids, merged_lp = merge_repeated_ids(ids, np.where(ids >= 0, lp, -np.inf).astype(np.float32))
    np.testing.assert_array_equal(merged_ids, [[2, 5, -1, -1], [3, 4, -1, -1], [7, -1, -1, 1]])
    np.testing.assert_allclose(np.exp(merged_lp), [[0.5, 0.1, 0, 0], [0.4, 0.3, 0, 0], [0.6, 0, 0, 0.05]], rtol=1e-6)
    same_ids, same_lp = merge_repeated_ids(ids[1:2], lp[1:2])  # no repeats: returned as they are
    np.testing.assert_array_equal(same_ids, ids[1:2])
    np.testing.assert_array_equal(same_lp, lp[1:2])
    logits = torch.randn(1, 3, 10, generator=torch.Generator().manual_seed(1))
    e = AlignedExample(np.array([1, 2, 3]), np.array([0, 1, 2]), np.zeros(3), np.array([False, True, True]),
                       np.array([1]), merged_ids[:1], merged_lp[:1])
    got = exact_map_loss(logits, collate_aligned([e]))
    ref = kd_loss(logits[0, 1:2], torch.tensor([[2, 5]]), torch.log(torch.tensor([[0.5, 0.1]])))
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_exact_rows_gathered_equal_kd_loss_on_the_whole_rows():
    """exact_map_loss gathers k log-probs per row (and reads a whole row only when its ids hold
    > 99% of the mass): values and gradients equal kd_loss over the full (P, V) rows, on every
    kind and tail, with unmapped entries, heavy rows and a shared log-normaliser."""
    from kdstream.distill.aligned_batch import AlignedExample
    from kdstream.distill.cross_losses import student_log_normalizer

    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 5, 12, generator=g) * 2
    base[0, 1, 3] = 12.0  # a row whose listed ids hold > 99% of the student's mass: the exact tail
    ids = np.array([[3, 7, -1], [1, 2, 4], [5, -1, -1], [0, 11, 6]])
    lp = np.log(np.array([[0.6, 0.2, 0.1], [0.3, 0.3, 0.2], [0.9, 0.05, 0.01], [0.4, 0.1, 0.1]], np.float32))
    lp = np.where(ids >= 0, lp, -np.inf).astype(np.float32)
    rows = [(0, 1), (0, 3), (1, 0), (1, 2)]
    examples = [AlignedExample(np.arange(5), np.arange(5), np.zeros(5), np.ones(5, bool), np.array([1, 3]),
                               ids[:2], lp[:2]),
                AlignedExample(np.arange(5), np.arange(5), np.zeros(5), np.ones(5, bool), np.array([0, 2]),
                               ids[2:], lp[2:])]
    batch = collate_aligned(examples)
    for kind, tail, temperature in [("forward_kl", "bucket", 1.0), ("forward_kl", "bucket", 2.0),
                                    ("reverse_kl", "bucket", 2.0), ("jsd", "bucket", 1.0),
                                    ("forward_kl", "renormalize", 2.0)]:
        a = base.clone().requires_grad_()
        got = exact_map_loss(a, batch, kind=kind, tail=tail, temperature=temperature,
                             log_normalizer=student_log_normalizer(a))
        b = base.clone().requires_grad_()
        full = torch.stack([b[i, t] for i, t in rows])  # (P, V)
        ref = kd_loss(full, torch.from_numpy(ids.clip(min=0)), torch.from_numpy(lp), kind=kind, tail=tail,
                      temperature=temperature)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(torch.autograd.grad(got, a)[0], torch.autograd.grad(ref, b)[0],
                                   rtol=1e-5, atol=1e-7)


def test_log1mexp_and_extremes():
    x = -torch.logspace(-7, 3, 200, dtype=torch.float64)
    ref = torch.log(-torch.expm1(x))
    torch.testing.assert_close(log1mexp(x.float()), ref.float(), rtol=1e-5, atol=1e-12)
    # p → 1 with q → 0, and p → 0 with q → 1, and a teacher log-prob rounded above 0
    lt = torch.tensor([0.0, 1e-4, -1e-9, -200.0, -1e-3, -50.0])
    ls = torch.tensor([-300.0, -80.0, -1e-12, -1e-9, -1e-3, -50.0], requires_grad=True)
    for kind in ("binary_kl", "reverse_binary_kl"):
        d = binary_divergence(lt, ls, kind)
        assert torch.isfinite(d).all() and (d >= -1e-6).all()
        assert d[-2:].abs().max() < 1e-6  # equal likelihoods: 0
        (g,) = torch.autograd.grad(d.sum(), ls)
        assert torch.isfinite(g).all()
    # extreme student logits through the whole loss
    from kdstream.distill.aligned_batch import AlignedExample

    e = AlignedExample(np.array([1, 2, 3, 4]), np.array([0, 1, 2, 3]), np.array([0.0, 0.0, -1e-8, -500.0]),
                       np.array([False, True, True, True]), np.array([0, 1, 2]), np.array([[2, -1], [3, 1], [4, -1]]),
                       np.array([[0.0, -np.inf], [-1e-7, -30.0], [-60.0, -np.inf]], np.float32))
    batch = collate_aligned([e])
    logits = torch.zeros(1, 4, 6)
    logits[0, 0, 2], logits[0, 1, 0], logits[0, 2, 4] = -1e4, 1e4, 1e4  # q ≈ 0 where p = 1 and the reverse
    logits.requires_grad_()
    for loss in (alm_loss(logits, batch), alm_loss(logits, batch, kind="reverse_binary_kl", temperature=3.0),
                 exact_map_loss(logits, batch), exact_map_loss(logits, batch, kind="reverse_kl"),
                 exact_map_loss(logits, batch, kind="jsd", tail="renormalize")):
        (g,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(g).all()


@pytest.mark.slow
def test_chunk_logprobs_from_the_store_match_the_teachers_forward(teacher_store, teacher_dir, tokenizer, other):
    """Chunk log-likelihoods from the store's target_logprob = the HF teacher's own (fp32) summed over the chunk."""
    from transformers import AutoModelForCausalLM

    from kdstream.storage import open_store

    store = open_store(str(teacher_store))
    model = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32).eval()
    aligner = Aligner(tokenizer, other)
    checked = 0
    for i in range(4):
        row = store[i]
        a = aligner.align(row["input_ids"])
        assert isinstance(a, Alignment)
        ids = torch.from_numpy(row["input_ids"])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]  # (L, V)
        from_store = teacher_chunk_logprobs(a, row["target_logprob"])
        for c in np.flatnonzero(a.usable):
            ta, tb = a.teacher_bounds[c]
            own = sum(float(logp[j - 1, ids[0, j]]) for j in range(ta, tb))
            assert from_store[c] == pytest.approx(own, abs=1e-3)
            checked += 1
        assert np.any(np.diff(a.teacher_bounds, axis=1) > 1) or np.any(np.diff(a.student_bounds, axis=1) > 1)
    assert checked > 50


def test_at_a_large_temperature_the_scaled_alm_pulls_by_the_relative_gap():
    """distill scales ALM by its temperature tau (cross_tokenizer.cross_terms): for tau >> |l| the
    gradient w.r.t. the student's chunk log-likelihood is then (l_S - l_T) / |l_S| whatever tau,
    not ~1/tau of it (why tokenkit's tau = 100 needs the scale next to a CE term)."""
    lt = torch.tensor([-3.0, -0.5, -6.0, -1.0])
    for tau in (100.0, 1000.0):
        ls = torch.tensor([-2.5, -0.7, -6.6, -1.0], requires_grad=True)
        (grad,) = torch.autograd.grad((tau * binary_divergence(lt / tau, ls / tau)).sum(), ls)
        expected = (ls.detach() - lt) / ls.detach().abs()
        torch.testing.assert_close(grad, expected, rtol=0.05, atol=1e-4)


def test_the_merge_is_skipped_only_where_the_map_cannot_repeat_an_id(tokenizer, other, docs):
    """map_repeats: the prefix map sends several teacher tokens to one student token, the identical
    map of these tokenizers does not; where it does not, aligned_example without the merge gives the
    same targets, and CrossTargets skips it."""
    from kdstream.distill.aligned_batch import map_repeats
    from kdstream.distill.cross_tokenizer import CrossTargets

    aligner = Aligner(tokenizer, other)
    identical = aligner.vocab_map("identical")
    # a student of the smaller vocabulary: teacher tokens it lacks fall back to shared prefixes
    assert not map_repeats(identical) and map_repeats(Aligner(other, tokenizer).vocab_map("prefix"))
    assert map_repeats(np.array([3, -1, 3])) and not map_repeats(np.array([3, -1, -1, 4]))
    ids = _ids(tokenizer, docs[2][:400])
    a = aligner.align(ids)
    logp, topk_ids, topk_lp = _fake_teacher(len(ids), len(tokenizer.get_vocab()), 8, seed=3)
    target = logp.gather(-1, torch.from_numpy(ids[1:, None])).squeeze(-1).numpy()
    merged = aligned_example(a, target, topk_ids, topk_lp, identical)
    unmerged = aligned_example(a, target, topk_ids, topk_lp, identical, merge=False)
    assert len(merged.exact_rows) > 0
    for name in ("exact_rows", "exact_ids", "exact_logprobs", "teacher_chunk_logprob"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(unmerged, name))
    assert not CrossTargets.build(tokenizer, other, "exact").merge
    assert CrossTargets.build(other, tokenizer, "exact", vocab_map="prefix").merge
