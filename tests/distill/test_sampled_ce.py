"""--loss ce_sampled: cross-entropy against a sampled store's draws, checked on a dense reference."""
import numpy as np
import pytest
import torch

from kdstream.distill.losses import KD_LOSSES, TAILS, kd_loss, sampled_ce_loss
from kdstream.storage.encoding import decode_samples, draw_samples

N, V, S = 6, 40, 64


def student_and_teacher(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, V, generator=g) * 2).requires_grad_(), \
        torch.log_softmax(torch.randn(N, V, generator=g) * 3, -1)


def sampled_view(teacher_logp, k, seed=0):
    """Draws from the top-k + tail as ``--targets sampled`` makes them, read back as the reader
    presents them: (ids (N, W), log(count / S) (N, W), counts (N, V) dense, tail draws (N,))."""
    top = teacher_logp.topk(k, -1)
    d = draw_samples(top.indices.numpy(), top.values.numpy(), S, min(S, k), np.random.default_rng(seed))
    ids, logprobs, _ = decode_samples(d["sample_ids"], d["sample_counts"], d["sample_tail_count"], S)
    dense = np.zeros((N, V))
    np.add.at(dense, (np.arange(N)[:, None], d["sample_ids"]), d["sample_counts"])
    return torch.from_numpy(ids), torch.from_numpy(logprobs), torch.from_numpy(dense), torch.from_numpy(
        d["sample_tail_count"].astype(np.float64))


def reference(student, counts, tail_draws, tail):
    """Float64, full vocabulary: -sum_v (count_v / S) log q_v, tail draws on the undrawn tokens' total."""
    log_q = torch.log_softmax(student.double(), -1)  # (N, V)
    drawn = counts > 0
    if tail == "renormalize":
        log_q = log_q.masked_fill(~drawn, float("-inf"))
        log_q = log_q - torch.logsumexp(log_q, -1, keepdim=True)
        return -(torch.where(drawn, counts * log_q, 0.0).sum(-1) / counts.sum(-1)).mean()
    log_rest = torch.logsumexp(log_q.masked_fill(drawn, float("-inf")), -1)  # (N,)
    return -((torch.where(drawn, counts * log_q, 0.0).sum(-1) + tail_draws * log_rest) / S).mean()


def grad(loss, x):
    return torch.autograd.grad(loss, x)[0]


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("k", [5, V])  # k = V: draws from the whole distribution, no tail draws
def test_equals_the_dense_cross_entropy_against_the_draws(k, tail):
    student, teacher = student_and_teacher()
    ids, logprobs, counts, tail_draws = sampled_view(teacher, k)
    assert (k == V) == (tail_draws.sum() == 0)
    loss = sampled_ce_loss(student, ids, logprobs, tail=tail)
    ref = reference(student, counts, tail_draws, tail).float()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad(loss, student), grad(ref, student), rtol=1e-4, atol=1e-6)


def test_which_ids_pad_a_row_does_not_matter():
    student, teacher = student_and_teacher()
    ids, logprobs, _, _ = sampled_view(teacher, 5)
    pad = torch.isneginf(logprobs)
    assert pad.any()
    other = ids.clone()
    other[pad] = (ids.max() + 1 + torch.arange(int(pad.sum()))) % V  # other unused ids (none drawn here)
    assert not any(set(other[i][pad[i]].tolist()) & set(ids[i][~pad[i]].tolist()) for i in range(N))
    for tail in TAILS:
        torch.testing.assert_close(sampled_ce_loss(student, other, logprobs, tail=tail),
                                   sampled_ce_loss(student, ids, logprobs, tail=tail))


def test_kd_loss_renormalize_on_a_sampled_store_ignores_the_padding():
    """kd_loss --tail renormalize on a sampled view: the padding ids (-inf) take no share of the
    student's renormalized mass, so which ids pad a row does not matter, and at T = 1 forward KL
    has ce_sampled's (renormalize) gradient."""
    student, teacher = student_and_teacher()
    ids, logprobs, _, _ = sampled_view(teacher, 5)
    pad = torch.isneginf(logprobs)
    other = ids.clone()
    other[pad] = (ids.max() + 1 + torch.arange(int(pad.sum()))) % V
    for kind in KD_LOSSES:
        a = kd_loss(student, ids, logprobs, kind=kind, temperature=2.0, tail="renormalize")
        b = kd_loss(student, other, logprobs, kind=kind, temperature=2.0, tail="renormalize")
        assert torch.isfinite(a) and torch.isfinite(grad(a, student)).all(), kind
        torch.testing.assert_close(a, b, msg=kind)
    kl = kd_loss(student, other, logprobs, kind="forward_kl", temperature=1.0, tail="renormalize")
    ce = sampled_ce_loss(student, ids, logprobs, tail="renormalize")
    torch.testing.assert_close(grad(kl, student), grad(ce, student), rtol=1e-4, atol=1e-7)


def test_is_forward_kl_at_t1_plus_the_entropy_of_the_targets():
    """On a view without padding (a top-k store's): same gradient as forward KL, value + H(p)."""
    student, teacher = student_and_teacher()
    top = teacher.topk(8, -1)
    ce = sampled_ce_loss(student, top.indices, top.values)
    kl = kd_loss(student, top.indices, top.values, kind="forward_kl", temperature=1.0)
    p = top.values.double().exp()
    p_tail = 1 - p.sum(-1)
    entropy = -((p * top.values).sum(-1) + p_tail * p_tail.log()).mean()
    torch.testing.assert_close(ce, kl + entropy.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad(ce, student), grad(kl, student), rtol=1e-4, atol=1e-7)


def test_mask_and_bad_arguments():
    student, teacher = student_and_teacher()
    ids, logprobs, counts, tail_draws = sampled_view(teacher, 5)
    mask = torch.tensor([True, False, True, True, False, True])
    masked = sampled_ce_loss(student, ids, logprobs, mask=mask)
    torch.testing.assert_close(masked, sampled_ce_loss(student[mask], ids[mask], logprobs[mask]))
    for call in (lambda: sampled_ce_loss(student, ids, logprobs, tail="drop"),
                 lambda: sampled_ce_loss(student, ids[:3], logprobs[:3]),
                 lambda: sampled_ce_loss(student, ids, logprobs[:, :2]),
                 lambda: sampled_ce_loss(student[0], ids[0], logprobs[0])):
        with pytest.raises(ValueError):
            call()
