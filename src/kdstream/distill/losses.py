"""Distillation losses against an offline top-k teacher store.

The store keeps, per position, the teacher's top-k token ids and their raw (T=1, natural log)
log-probabilities. Both distributions are compared over k+1 classes: the k stored tokens plus
either one "tail" class holding all remaining mass (``bucket``) or nothing (``renormalize``, the
top-k are renormalised and the rest of the vocabulary is ignored). Temperature is applied here,
with Hinton's T**2 factor so gradient magnitudes stay comparable across temperatures.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from kdstream.distill import loss_names
from kdstream.distill.loss_names import KD_LOSSES, TAILS

CE_SAMPLED = loss_names.CE_SAMPLED  # also named from here by the objective and the sources
HARD = loss_names.HARD

# Floor on the teacher's tempered tail probability (bucket tail, non-empty student tail). Without
# it a stored top-k whose mass rounds to >= 1 gives the teacher a zero tail, and reverse KL
# (student mass where the teacher has none) is +inf with NaN gradients.
_LOG_TAIL_FLOOR = math.log(1e-6)
_NEG_INF = float("-inf")
# Above this top-k mass, log(1 - mass) loses too many digits in fp32: use the exact masked sum.
_CANCEL_LIMIT = 0.99


class _LogSoftmax(torch.autograd.Function):
    """log_softmax over the last dim whose backward writes the gradient into the saved output's
    storage instead of a new tensor.

    Why: over (N, V) logits, torch's backward holds the saved output, the incoming gradient and
    a fresh result at once: three vocabulary-sized tensors. Here the output is dead once its own
    backward runs (every op that consumes it has run before, in topological order), so its
    buffer takes the result: two. Same formula as torch's: g - exp(out) * sum(g).
    """

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        out = torch.log_softmax(z, -1)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors  # a second backward through it fails the version check, loudly
        p = out.exp_()  # (N, V) probabilities, in place
        return torch.addcmul(grad, p, grad.sum(-1, keepdim=True), value=-1.0, out=p)


def log_softmax(z: Tensor) -> Tensor:
    """log_softmax(z, -1), (N, V) → (N, V), lean in memory when it is differentiated (_LogSoftmax)."""
    return _LogSoftmax.apply(z) if z.requires_grad and torch.is_grad_enabled() else torch.log_softmax(z, -1)


def teacher_distribution(topk_logprobs: Tensor, temperature: float, tail: str) -> Tensor:
    """(N, k) raw teacher logprobs -> (N, k+1) tempered teacher log-probs over [top-k..., tail].

    bucket: the leftover mass m = 1 - sum p_i (clamped to >= 0 against float noise) is one class;
    under T the weights p_i^(1/T) and m^(1/T) are renormalised. For T != 1 this is an
    approximation: the tail is tempered as if it were a single token (the true tempered tail,
    sum_j p_j^(1/T) over unseen tokens, is unknown without them). Exact at T = 1.
    renormalize: softmax(logp_i / T) over the k entries; tail log-prob = -inf.
    """
    logp = topk_logprobs.float()  # (N, k)
    if tail == "bucket":
        mass = logp.exp().sum(-1, keepdim=True).clamp(max=1.0)  # (N, 1)
        log_tail = torch.log1p(-mass)  # (N, 1); -inf when the top-k hold all the mass
        return torch.log_softmax(torch.cat([logp, log_tail], -1) / temperature, -1)  # (N, k+1)
    if tail == "renormalize":
        top = torch.log_softmax(logp / temperature, -1)  # (N, k)
        return torch.cat([top, top.new_full((top.shape[0], 1), _NEG_INF)], -1)  # (N, k+1)
    raise ValueError(f"unknown tail {tail!r}; expected one of {TAILS}")


def student_distribution(student_logits: Tensor, topk_ids: Tensor, temperature: float, tail: str,
                         listed: Tensor | None = None) -> Tensor:
    """(N, V) logits, (N, k) ids -> (N, k+1) tempered student log-probs over [top-k..., tail].

    bucket: the student is coarsened exactly like the teacher, then tempered like the teacher:
    at T = 1, the k stored tokens plus a tail class log(1 - sum of their probabilities), and
    then log_softmax([top-k..., tail] / T). Tempering both sides by the same rule keeps the two
    (k+1)-way distributions comparable; tempering the student's full softmax instead would put
    a large tempered tail (many small probabilities flattened) against the teacher's single
    tempered tail token, which turns the top-k gradient away from the dense one (this rule's
    gradient against the dense one on SmolLM2: docs/benchmarks.md, loss fidelity). Exact when k = V.
    The tail is log1p(-mass) while it holds at least 1% of the mass (fp32 cancellation error
    there is ~1e-5 relative), and, for rows whose top-k hold more, the exact logsumexp of the
    non-top-k log-probs (top-k columns masked with -inf), computed on those rows only. One
    log_softmax over (N, V) is the only vocabulary-sized work on most rows, which keeps a KD step
    close to a CE step. An empty tail (k == V) is -inf, computed so that no NaN reaches the
    gradient. renormalize: log_softmax over the k gathered logits / T only, and only over the
    ``listed`` (N, k) bool entries when given (a sampled store's rows end in padding ids the
    teacher gives probability 0: they must not take a share of the student's renormalized mass).
    bucket with ``listed``: the unlisted entries (a ragged store's padding, id 0) are no class
    (log-prob -inf) and their ids are not removed from the tail, so the tail is 1 - the mass of
    the listed ids; without it every entry counts as listed.
    """
    z = student_logits.float()  # (N, V)
    ids = topk_ids.long()  # (N, k)
    if tail == "renormalize":
        return renormalized_student(z.gather(-1, ids), temperature, listed)
    if tail != "bucket":
        raise ValueError(f"unknown tail {tail!r}; expected one of {TAILS}")
    logp = log_softmax(z)  # (N, V)
    return bucketed_student(logp.gather(-1, ids), ids, temperature, listed, lambda rows: logp[rows])


def renormalized_student(gathered: Tensor, temperature: float, listed: Tensor | None = None) -> Tensor:
    """(N, k) student logits (or log-probs: a per-row shift cancels) at the teacher's ids →
    (N, k+1) the renormalize tail's tempered distribution (student_distribution)."""
    if listed is not None:
        gathered = gathered.masked_fill(~listed, _NEG_INF)
    top = torch.log_softmax(gathered / temperature, -1)  # (N, k)
    return torch.cat([top, top.new_full((top.shape[0], 1), _NEG_INF)], -1)  # (N, k+1)


def bucketed_student(top: Tensor, ids: Tensor, temperature: float, listed: Tensor | None,
                     full_rows: Callable[[Tensor], Tensor]) -> Tensor:
    """(N, k) student T = 1 log-probs at the teacher's ids → (N, k+1) the bucket tail's tempered
    distribution (student_distribution). ``full_rows(rows)`` gives those rows' (h, V) T = 1
    log-probs; it is called only for rows whose top-k hold more than 99% of the mass, so a caller
    that has the normaliser can gather (N, k) entries and never build (N, V)."""
    if listed is not None:
        top = top.masked_fill(~listed, _NEG_INF)  # padding: no class, no mass (gradient 0)
    mass = top.exp().sum(-1, keepdim=True)  # (N, 1)
    log_tail = torch.log1p(-mass.clamp(max=_CANCEL_LIMIT))  # (N, 1); replaced below where mass is larger
    heavy = (mass > _CANCEL_LIMIT).squeeze(-1).nonzero().squeeze(-1)  # (h,) rows needing the exact path
    if heavy.numel():
        logp = full_rows(heavy)  # (h, V)
        if listed is None:
            rest = logp.scatter(-1, ids[heavy], _NEG_INF)  # (h, V), top-k columns removed
        else:  # only the listed ids' columns (a padding id may be listed elsewhere in the row, or not)
            drop = torch.zeros_like(logp).scatter_reduce(-1, ids[heavy], listed[heavy].float(), "amax")
            rest = logp.masked_fill(drop > 0, _NEG_INF)  # (h, V)
        empty = torch.isneginf(rest).all(-1, keepdim=True)  # (h, 1)
        # logsumexp over an all -inf row has a NaN gradient; feed it zeros there and mask the result.
        exact = torch.logsumexp(rest.masked_fill(empty, 0.0), -1, keepdim=True).masked_fill(empty, _NEG_INF)
        log_tail = log_tail.index_put((heavy,), exact)
    coarse = torch.cat([top, log_tail], -1)  # (N, k+1) at T = 1
    return coarse if temperature == 1.0 else torch.log_softmax(coarse / temperature, -1)


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """Row-wise KL(p || q) = sum p (log p - log q) from log-probs (N, C) -> (N,).

    Classes with p == 0 contribute exactly 0, and their -inf entries are swapped for 0 before any
    arithmetic so neither the value nor the gradient can become NaN.
    """
    p = logp.exp()
    pos = p > 0
    diff = torch.where(pos, logp, 0.0) - torch.where(pos, logq, 0.0)
    return torch.where(pos, p * diff, 0.0).sum(-1)


def _divergence(log_t: Tensor, log_s: Tensor, kind: str, beta: float) -> Tensor:
    """(N, C) teacher and student log-probs -> (N,) divergence."""
    if kind == "forward_kl":
        return _kl(log_t, log_s)
    if kind == "reverse_kl":
        return _kl(log_s, log_t)
    # Generalized JSD (GKD, Agarwal et al.): m = beta*t + (1-beta)*s. As beta -> 0 it behaves like
    # beta * KL(t || s) (forward), as beta -> 1 like (1-beta) * KL(s || t) (reverse); at exactly
    # 0 or 1 it is identically 0, so use forward_kl / reverse_kl for those.
    a = log_t + math.log(beta) if beta > 0 else torch.full_like(log_t, _NEG_INF)
    b = log_s + math.log(1 - beta) if beta < 1 else torch.full_like(log_s, _NEG_INF)
    both = torch.isneginf(a) & torch.isneginf(b)  # m == 0: logaddexp would give a NaN gradient
    log_m = torch.logaddexp(a.masked_fill(both, 0.0), b.masked_fill(both, 0.0)).masked_fill(both, _NEG_INF)
    out = log_t.new_zeros(log_t.shape[0])
    if beta > 0:  # skip zero-weight terms: 0 * inf would be NaN
        out = out + beta * _kl(log_t, log_m)
    if beta < 1:
        out = out + (1 - beta) * _kl(log_s, log_m)
    return out


def _check_options(kind: str, temperature: float, beta: float) -> None:
    if kind not in KD_LOSSES:
        raise ValueError(f"unknown kd loss kind {kind!r}; expected one of {KD_LOSSES}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")


def _check_common(student_logits: Tensor, kind: str, temperature: float, beta: float,
                  mask: Tensor | None) -> None:
    _check_options(kind, temperature, beta)
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be (N, V), got shape {tuple(student_logits.shape)}")
    if mask is not None and (mask.shape != student_logits.shape[:1] or mask.dtype != torch.bool):
        raise ValueError(f"mask must be a bool tensor of shape ({student_logits.shape[0]},), "
                         f"got {mask.dtype} {tuple(mask.shape)}")


def _mean(rows: Tensor, temperature: float) -> Tensor:
    """(N,) per-position divergences -> T**2-scaled mean (0 when there are no positions)."""
    return rows.sum() / max(rows.shape[0], 1) * temperature**2


def kd_loss(student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor, *, kind: str = "forward_kl",
            temperature: float = 1.0, tail: str = "bucket", beta: float = 0.5,
            mask: Tensor | None = None) -> Tensor:
    """Mean over valid positions of D(teacher, student) on the (k+1)-class distributions, times T**2.

    forward_kl = KL(teacher || student), reverse_kl = KL(student || teacher), jsd = generalized JSD
    (beta=0.5 symmetric; beta -> 0 ~ forward KL, beta -> 1 ~ reverse KL, see _divergence).
    Shapes: student_logits (N, V) any float dtype (computed in fp32), topk_ids (N, k) int,
    topk_logprobs (N, k), mask (N,) bool or None (all valid). Ids are not range-checked.
    Bucket tail: where the student has no tail (k == V) the teacher's tail is dropped too (it is
    only float noise there), otherwise the teacher's tempered tail probability is floored at 1e-6
    so reverse KL / JSD stay finite when the stored top-k mass rounds to >= 1.
    """
    _check_common(student_logits, kind, temperature, beta, mask)
    if tail not in TAILS:
        raise ValueError(f"unknown tail {tail!r}; expected one of {TAILS}")
    n, v = student_logits.shape
    if topk_ids.dim() != 2 or topk_ids.shape[0] != n or not 1 <= topk_ids.shape[1] <= v:
        raise ValueError(f"topk_ids must be (N={n}, k) with 1 <= k <= V={v}, "
                         f"got shape {tuple(topk_ids.shape)}")
    if topk_ids.is_floating_point() or topk_ids.is_complex():
        raise ValueError(f"topk_ids must be an integer tensor, got {topk_ids.dtype}")
    if topk_logprobs.shape != topk_ids.shape:
        raise ValueError(f"topk_logprobs shape {tuple(topk_logprobs.shape)} "
                         f"!= topk_ids shape {tuple(topk_ids.shape)}")
    if mask is not None:  # drop rows up front: masked rows get exactly zero gradient, even if garbage
        student_logits, topk_ids, topk_logprobs = student_logits[mask], topk_ids[mask], topk_logprobs[mask]

    # only the entries the teacher lists: -inf marks padding (a sampled store's, a ragged store's)
    listed = ~torch.isneginf(topk_logprobs)  # (N, k)
    log_s = student_distribution(student_logits, topk_ids, temperature, tail, listed)  # (N, k+1)
    return kd_on_student(log_s, topk_logprobs, kind=kind, temperature=temperature, tail=tail, beta=beta)


def kd_on_student(log_s: Tensor, topk_logprobs: Tensor, *, kind: str, temperature: float, tail: str,
                  beta: float) -> Tensor:
    """kd_loss from the student's (N, k+1) distribution (student_distribution, with ``listed`` the
    entries whose teacher log-prob is finite) and the teacher's (N, k) raw log-probs."""
    _check_options(kind, temperature, beta)
    log_t = teacher_distribution(topk_logprobs, temperature, tail)  # (N, k+1)
    if tail == "bucket":
        empty = torch.isneginf(log_s[:, -1:])  # (N, 1)
        t_tail = log_t[:, -1:].clamp(min=_LOG_TAIL_FLOOR).masked_fill(empty, _NEG_INF)
        log_t = torch.log_softmax(torch.cat([log_t[:, :-1], t_tail], -1), -1)  # (N, k+1)
    return _mean(_divergence(log_t, log_s, kind, beta), temperature)


def dense_kd_loss(student_logits: Tensor, teacher_logits: Tensor, *, kind: str = "forward_kl",
                  temperature: float = 1.0, beta: float = 0.5, mask: Tensor | None = None) -> Tensor:
    """Reference: the same divergence over the full vocabulary from full teacher logits (N, V).

    Used by tests and fidelity tools to measure what the top-k approximation loses.
    """
    _check_common(student_logits, kind, temperature, beta, mask)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} "
                         f"!= student_logits shape {tuple(student_logits.shape)}")
    if mask is not None:
        student_logits, teacher_logits = student_logits[mask], teacher_logits[mask]
    log_s = torch.log_softmax(student_logits.float() / temperature, -1)  # (N, V)
    log_t = torch.log_softmax(teacher_logits.float() / temperature, -1)  # (N, V)
    return _mean(_divergence(log_t, log_s, kind, beta), temperature)


def ce_loss(student_logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Plain next-token cross-entropy, mean over valid positions (0 when none are valid).

    student_logits (N, V), targets (N,) int, mask (N,) bool or None.
    """
    if student_logits.dim() != 2 or targets.shape != student_logits.shape[:1]:
        raise ValueError(f"expected student_logits (N, V) and targets (N,), "
                         f"got {tuple(student_logits.shape)} and {tuple(targets.shape)}")
    if mask is not None:
        if mask.shape != targets.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(targets.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        student_logits, targets = student_logits[mask], targets[mask]
    logp = log_softmax(student_logits.float())  # (N, V); = F.cross_entropy, with the leaner backward
    return -logp.gather(-1, targets.long()[:, None]).sum() / max(targets.shape[0], 1)


def teacher_top1(topk_ids: Tensor, topk_logprobs: Tensor) -> Tensor:
    """topk_ids, topk_logprobs (N, k) → (N,) the id of each row's largest stored logprob (the
    first on a tie; a sampled store's most drawn id). Rows need not be sorted; padding is -inf."""
    return topk_ids.gather(-1, topk_logprobs.argmax(-1, keepdim=True)).squeeze(-1)


def hard_ce_loss(student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor) -> Tensor:
    """Word-level hard KD: cross-entropy of the student on the teacher's top-1 token at each row
    (``teacher_top1``) instead of the data's next token. student_logits (N, V), top-k (N, k);
    mean over rows. No temperature: the target is one token."""
    if topk_ids.shape != topk_logprobs.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != student_logits.shape[0]:
        raise ValueError(f"topk_ids and topk_logprobs must both be (N={student_logits.shape[0]}, k), "
                         f"got {tuple(topk_ids.shape)} and {tuple(topk_logprobs.shape)}")
    return ce_loss(student_logits, teacher_top1(topk_ids, topk_logprobs))


def sampled_ce_loss(student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor, *, tail: str = "bucket",
                    mask: Tensor | None = None) -> Tensor:
    """Cross-entropy of the student against the empirical distribution of a sampled store's draws.

    A sampled store (``--targets sampled``) is read as a top-k view: topk_ids (N, k) the drawn ids
    then padding, topk_logprobs (N, k) = log(count / S) for S draws (-inf on padding), and the
    draws that fell in the teacher's tail, 1 - sum(count) / S. Per position, -sum_c p_c log q_c with
    p = count / S over the classes [drawn ids..., rest]. ``bucket``: "rest" is one class, on the
    teacher's side the tail draws, on the student's every token not drawn (padding ids included,
    so the result does not depend on which ids pad a row). ``renormalize``: the drawn ids only, both
    sides renormalized over them, tail draws ignored (a row without a drawn id adds 0).
    student_logits (N, V) any float dtype (fp32 inside), mask (N,) bool or None; mean over
    valid positions. No temperature: the counts are an unbiased estimate of the T = 1 teacher's
    top-k probabilities and the loss is linear in them; tempering counts (count^(1/T)) is not.
    It is forward KL at T = 1 plus the entropy of the draws, which does not depend on the
    student: on a view without padding, the gradient is ``kd_loss(kind="forward_kl",
    temperature=1)``'s (that one floors the teacher's tail at 1e-6); the value is a
    cross-entropy, comparable with ``ce_loss``. Per token j, d loss / d logit_j = q_j - count_j / S,
    except that the tail draws' mass is spread over the undrawn tokens in proportion to q.
    """
    _check_common(student_logits, "forward_kl", 1.0, 0.5, mask)
    if tail not in TAILS:
        raise ValueError(f"unknown tail {tail!r}; expected one of {TAILS}")
    n, v = student_logits.shape
    if topk_ids.shape != topk_logprobs.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != n \
            or not 1 <= topk_ids.shape[1] <= v:
        raise ValueError(f"topk_ids and topk_logprobs must both be (N={n}, k) with k <= V={v}, "
                         f"got {tuple(topk_ids.shape)} and {tuple(topk_logprobs.shape)}")
    if mask is not None:
        student_logits, topk_ids, topk_logprobs = student_logits[mask], topk_ids[mask], topk_logprobs[mask]
    p = topk_logprobs.float().exp()  # (N, k) count / S, 0 on padding
    drawn = p > 0
    if tail == "renormalize":
        z = student_logits.float().gather(-1, topk_ids.long()).masked_fill(~drawn, _NEG_INF)  # (N, k)
        some = drawn.any(-1, keepdim=True)  # (N, 1); all -inf rows would give NaN: feed them zeros
        log_q = torch.log_softmax(z.masked_fill(~some, 0.0), -1)
        p = p / p.sum(-1, keepdim=True).clamp(min=1e-30)
        return _mean(-torch.where(drawn, p * torch.where(drawn, log_q, 0.0), 0.0).sum(-1), 1.0)
    log_s = student_distribution(student_logits, topk_ids, 1.0, "bucket")  # (N, k+1), padding counted as listed
    # Fold the padding ids' student mass into the rest: log(q_tail + sum over padding q).
    rest = torch.cat([log_s[:, -1:], log_s[:, :-1].masked_fill(drawn, _NEG_INF)], -1)  # (N, k+1)
    empty = torch.isneginf(rest).all(-1, keepdim=True)  # every token drawn (k == V): no rest class
    log_rest = torch.logsumexp(rest.masked_fill(empty, 0.0), -1, keepdim=True).masked_fill(empty, _NEG_INF)
    # The rest's target, 1 - sum(count) / S, in fp32: zero it where the student has no rest
    # (there it is rounding noise times -inf).
    p_rest = (1.0 - p.sum(-1, keepdim=True)).clamp(min=0.0).masked_fill(empty, 0.0)  # (N, 1)
    ce_top = torch.where(drawn, p * torch.where(drawn, log_s[:, :-1], 0.0), 0.0).sum(-1)  # (N,)
    ce_rest = torch.where(p_rest > 0, p_rest * torch.where(p_rest > 0, log_rest, 0.0), 0.0).squeeze(-1)
    return _mean(-(ce_top + ce_rest), 1.0)
