"""Losses for a student whose tokenizer differs from the teacher store's, over an ``AlignedBatch``.

``alm_loss``: Approximate Likelihood Matching (Minixhofer, Vulić, Ponti, NeurIPS 2025,
arXiv 2503.20083). Each chunk c (text between two byte offsets where both tokenizations have a
boundary, align.py) has a log-likelihood under both models: the teacher's ℓ_T(c), the sum of the
store's target log-probs over its teacher tokens (computed in the loader), and the student's
ℓ_S(c), the sum of log_softmax(logits)[s - 1, id_s] over its student tokens s. Each side's chunk
probability is read as a Bernoulli parameter, p = exp(ℓ_T / τ), q = exp(ℓ_S / τ), and the loss
is a divergence between Bernoulli(p) and Bernoulli(q), averaged over usable chunks:

    binary_kl          p log(p / q) + (1 - p) log((1 - p) / (1 - q))     (default)
    reverse_binary_kl  q log(q / p) + (1 - q) log((1 - q) / (1 - p))

What is implemented, and why:
- divergence: the binarised KL, forward by default. It is the paper's construction (an
  f-divergence between two-outcome distributions built from chunk likelihoods); the binary KL
  has the gradient of the binary cross-entropy (they differ by the teacher's binary entropy,
  constant for the student) and is 0 at a perfect match, which makes the value readable. The
  reverse one is offered for comparison. The reference code (tokenkit, training/losses.py and
  configs/cross_tokenizer_distill.yaml) defaults to the binary cross-entropy (the same
  gradient) at a binarisation temperature of 100, on "unbiased" chunks, over several merged
  chunk sizes; only the temperature is offered here (``distill --alm-temperature``).
- temperature: τ divides both chunk log-likelihoods before exponentiation (p = P_T(c)^(1/τ)),
  here τ = 1 by default (``distill`` passes --alm-temperature, else --temperature, and scales the
  term by τ: cross_tokenizer.cross_terms): with one chunk per token (same tokenizer) the loss is then exactly the
  token-level binary KL of the true next token's probability. τ > 1 lifts long chunks' tiny
  probabilities out of the region where both Bernoullis are ~0 and the divergence vanishes. No
  τ² factor (there is no softmax being tempered).
- debiasing: none. The teacher's chunk likelihood is the probability of the teacher's own
  tokenization of the chunk, not of its bytes (tokenization bias); restricting to shared
  boundaries removes most of it, and the store keeps no more than the top-k needed to estimate
  the rest. The paper's debiasing is therefore not implemented.
- numerics: in log space; log(1 - p) through ``log1mexp``; ℓ clamped to <= -1e-6 (a stored
  log-prob can round above 0, and log(1 - q) is -inf at q = 1) so values and gradients stay
  finite for p → 1, q → 0 and the reverse.

``exact_map_loss``: at student positions whose next token starts at a byte where the teacher's
next token starts too, the teacher's top-k mapped to byte-identical student ids (the rest of the
mass, unmapped ids included, in the tail) and the usual top-k ``kd_loss`` over those rows.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from kdstream.distill.aligned_batch import AlignedBatch
from kdstream.distill.losses import bucketed_student, kd_on_student, renormalized_student

ALM_KINDS = ("binary_kl", "reverse_binary_kl")
_LN2 = math.log(2.0)
_MAX_LOGP = -1e-6  # log-likelihoods are clamped to at most this (see the module docstring)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate everywhere (Mächler 2012): log(-expm1(x)) near 0,
    log1p(-exp(x)) below -ln 2. Each branch sees only inputs where it is finite, so the gradient
    through ``torch.where`` is never 0 * inf. x = 0 gives -inf."""
    near = x > -_LN2
    a = torch.log(-torch.expm1(torch.where(near, x, -_LN2)))
    b = torch.log1p(-torch.exp(torch.where(near, -_LN2, x)))
    return torch.where(near, a, b)


def binary_divergence(log_p: Tensor, log_q: Tensor, kind: str = "binary_kl") -> Tensor:
    """(N,) log p, (N,) log q → (N,) divergence between Bernoulli(p) and Bernoulli(q) (ALM_KINDS)."""
    if kind not in ALM_KINDS:
        raise ValueError(f"unknown alm kind {kind!r}; expected one of {ALM_KINDS}")
    if kind == "reverse_binary_kl":
        log_p, log_q = log_q, log_p
    a, b = log_p.clamp(max=_MAX_LOGP), log_q.clamp(max=_MAX_LOGP)
    la, lb = log1mexp(a), log1mexp(b)
    return a.exp() * (a - b) + la.exp() * (la - lb)


def student_log_normalizer(student_logits: Tensor) -> Tensor:
    """(B, L, V) logits → (B, L - 1) fp32 logsumexp of each position that predicts a next token.

    Computed once per step and shared by every term (CE, ALM, the exact rows): a vocabulary-sized
    pass, forward and backward, costs as much as a term's own work (docs/benchmarks.md#step-time)."""
    # over all L positions, then sliced: slicing (B, L, V) first costs a (B, L, V) zero-fill and copy in backward
    return torch.logsumexp(student_logits.float(), -1)[:, :-1]


def student_token_logprobs(student_logits: Tensor, input_ids: Tensor, log_normalizer: Tensor | None = None) -> Tensor:
    """(B, L, V) logits, (B, L) ids → (B, L - 1) fp32 log-prob of token t + 1 at position t.

    gather minus logsumexp: no (B, L, V) log-softmax is kept for the backward. ``log_normalizer``:
    student_log_normalizer of these logits, when the caller has it.
    """
    lse = student_log_normalizer(student_logits) if log_normalizer is None else log_normalizer
    nxt = torch.nn.functional.pad(input_ids[:, 1:].long(), (0, 1))  # (B, L): last column a dummy id, sliced off
    picked = student_logits.gather(-1, nxt[..., None]).squeeze(-1)[:, :-1].float()  # (B, L-1)
    return picked - lse


def student_chunk_logprobs(student_logits: Tensor, batch: AlignedBatch, token_logprobs: Tensor | None = None) -> Tensor:
    """(B, L, V) logits → (N,) the student's log-likelihood of every chunk of the batch.

    Token 0 of an example has no log-prob; chunks holding it are not usable, so it is not needed.
    ``token_logprobs``: student_token_logprobs of these logits when the caller has them already
    (one vocabulary-sized logsumexp per step, not one per term).
    """
    lp = student_token_logprobs(student_logits, batch.input_ids) if token_logprobs is None else token_logprobs
    chunk = batch.token_chunk[:, 1:]  # (B, L-1), -1 on padding
    keep = chunk >= 0
    out = lp.new_zeros(batch.teacher_chunk_logprob.shape[0])
    return out.index_add(0, chunk[keep], lp[keep])


def alm_loss(student_logits: Tensor, batch: AlignedBatch, *, temperature: float = 1.0,
             kind: str = "binary_kl", token_logprobs: Tensor | None = None) -> Tensor:
    """ALM: mean over usable chunks of binary_divergence(ℓ_T / τ, ℓ_S / τ); 0 without usable chunks.

    student_logits (B, L, V) for batch.input_ids (B, L), any float dtype (fp32 inside);
    token_logprobs (B, L-1): as in student_chunk_logprobs.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.dim() != 3 or student_logits.shape[:2] != batch.input_ids.shape:
        raise ValueError(f"student_logits must be (B, L, V) with (B, L) = {tuple(batch.input_ids.shape)}, "
                         f"got {tuple(student_logits.shape)}")
    ls = student_chunk_logprobs(student_logits, batch, token_logprobs)  # (N,)
    use = batch.chunk_usable
    lt = batch.teacher_chunk_logprob.to(ls)  # (N,)
    rows = binary_divergence(lt[use] / temperature, ls[use] / temperature, kind)  # (n,)
    return rows.sum() / max(rows.shape[0], 1)


def exact_map_loss(student_logits: Tensor, batch: AlignedBatch, *, kind: str = "forward_kl",
                   temperature: float = 1.0, tail: str = "bucket", beta: float = 0.5,
                   log_normalizer: Tensor | None = None) -> Tensor:
    """kd_loss over the batch's exact rows (kind, temperature, tail, beta: as in kd_loss).

    student_logits (B, L, V); log_normalizer (B, L - 1): student_log_normalizer of them, when
    the caller has it. The student's log-probs are gathered at the k mapped ids and shifted by the
    row's normaliser, so no (rows, V) copy is made (only rows whose k ids hold > 99% of the mass
    read their whole row, for the exact tail). Unmapped teacher entries (id -1, log-prob -inf) are
    no class on either side: the teacher's mass there lands in its tail (bucket), or is dropped
    (renormalize), and the student's tail is exactly the mass off the mapped ids.
    """
    if student_logits.dim() != 3 or student_logits.shape[:2] != batch.input_ids.shape:
        raise ValueError(f"student_logits must be (B, L, V) with (B, L) = {tuple(batch.input_ids.shape)}, "
                         f"got {tuple(student_logits.shape)}")
    b, t = batch.exact_batch, batch.exact_row  # (P,)
    if b.shape[0] == 0:
        return student_logits.sum() * 0.0  # keeps the graph: a step without exact rows adds nothing
    teacher = batch.exact_logprobs  # (P, k)
    listed = ~torch.isneginf(teacher)
    ids = batch.exact_ids.clamp(min=0).long()  # an unmapped entry is unlisted: any id in range does
    gathered = student_logits[b[:, None], t[:, None], ids].float()  # (P, k)
    if tail == "renormalize":  # the normaliser cancels
        log_s = renormalized_student(gathered, temperature, listed)
    else:
        lse = student_log_normalizer(student_logits) if log_normalizer is None else log_normalizer
        norm = lse[b, t][:, None]  # (P, 1)
        log_s = bucketed_student(gathered - norm, ids, temperature, listed,
                                 lambda rows: student_logits[b[rows], t[rows]].float() - norm[rows])
    return kd_on_student(log_s, teacher, kind=kind, temperature=temperature, tail=tail, beta=beta)
