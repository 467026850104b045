"""Output layer + loss in one pass over chunks of positions, never holding the full (N, V) logits.

Liger-style: in forward, each chunk's logits = h @ W^T (+ b) are made, turned into the chunk's
loss, and differentiated right away (``torch.autograd.grad`` on that chunk's small graph, so any
loss built from differentiable torch ops works, no hand-written gradients); the chunk's gradient
w.r.t. its logits then goes straight into grad_h[chunk] and one preallocated grad_W (and grad_b).
Backward only scales those saved gradients by the incoming gradient: nothing is recomputed, so a
step costs what the plain path costs, and the memory is one chunk's logits and their gradient
(plus grad_W and grad_h) instead of all N positions'.

The loss must be a sum over chunks of (chunk mean × chunk share), i.e. a mean over positions:
``loss_fn(logits, rows)`` returns chunk means, weighted here by rows/N. Only element 0 of its
output is differentiated; the other elements are carried along for logging (no gradient).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# logits (n, V) fp32, the chunk's rows of the N positions -> (m,) means over those n rows
LossFn = Callable[[Tensor, slice], Tensor]
AUTO_CHUNK_BYTES = 64 << 20  # fp32 logits of one chunk: the loss holds about two such tensors


def auto_chunk(vocab_size: int) -> int:
    """Positions per chunk so one chunk's (rows, V) fp32 logits fit in AUTO_CHUNK_BYTES: 333 at
    V = 50,304, 4,096 at V = 4,096 (where the whole batch is usually one chunk). Peak memory and
    time against the plain path: docs/benchmarks.md."""
    return max(1, AUTO_CHUNK_BYTES // (4 * int(vocab_size)))


def fused_head_loss(hidden: Tensor, weight: Tensor, bias: Tensor | None, loss_fn: LossFn, chunk: int) -> Tensor:
    """hidden (N, H), weight (V, H), bias (V,) or None → (m,) = sum over chunks of loss_fn × rows/N.

    The matmul runs in the autocast dtype when autocast is on for hidden's device (as
    ``nn.Linear`` would), else in the weight's dtype; loss_fn always gets fp32 logits. Gradients
    reach hidden, weight and bias through autograd (so DDP/FSDP hooks and tied weights work), for
    element 0 of the result only. Without grad mode, or when nothing needs a gradient, it is a
    chunked forward pass. Backward may run once (no retain_graph, no double backward).
    """
    needs = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and any(needs):
        return _FusedHead.apply(hidden, weight, bias, loss_fn, chunk)
    w, b, dtype = _compute_weights(hidden, weight, bias)
    n, total = hidden.shape[0], None
    with torch.autocast(hidden.device.type, enabled=False):
        for s in range(0, n, chunk):
            rows = slice(s, min(s + chunk, n))
            part = loss_fn(F.linear(hidden[rows].to(dtype), w, b).float(), rows) * ((rows.stop - s) / n)
            total = part if total is None else total + part
    return total


def _compute_weights(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None, torch.dtype]:
    """(weight, bias, dtype) for the matmul, detached: cast once per call to the autocast dtype
    (a (V, H) copy, as autocast's own weight cache makes) or left as they are."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    return weight.detach().to(dtype), None if bias is None else bias.detach().to(dtype), dtype


class _FusedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, loss_fn: LossFn, chunk: int) -> Tensor:
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w, b, dtype = _compute_weights(hidden, weight, bias)
        n = hidden.shape[0]
        # Gradients, filled chunk by chunk; grad_h is computed even when hidden needs none (one
        # small matmul per chunk) so that every chunk's graph has the same single input.
        grad_h = torch.empty_like(hidden)  # (N, H)
        grad_w = torch.zeros_like(weight) if need_w else None  # (V, H), weight's dtype (fp32 master)
        grad_b = torch.zeros_like(bias) if need_b else None  # (V,)
        total = None
        with torch.autocast(hidden.device.type, enabled=False), torch.enable_grad():
            for s in range(0, n, chunk):
                rows = slice(s, min(s + chunk, n))
                h = hidden[rows].detach().requires_grad_()  # (c, H) leaf of this chunk's graph
                h_mm = h.detach().to(dtype)  # (c, H) as the matmul sees it
                logits = F.linear(h.to(dtype), w, b)  # (c, V) in the compute dtype
                if need_w or need_b:
                    # The hook sees d loss / d logits (c, V) on its way to the matmul's backward,
                    # which (W detached) then computes grad_h only: grad_W accumulates in place,
                    # and the logits themselves need not be kept alive for backward.
                    logits.register_hook(_accumulate(grad_w, grad_b, h_mm))
                logits = logits.float()  # (c, V) fp32 for the loss (the same tensor when fp32)
                part = loss_fn(logits, rows)  # (m,) chunk means
                del logits  # no backward saves the logits (log_softmax saves its output): free them now
                share = (rows.stop - s) / n
                (grad_h[rows],) = torch.autograd.grad(part[0] * share, h)
                part = part.detach() * share
                total = part if total is None else total + part
        ctx.grads = (grad_h if need_h else None, grad_w, grad_b)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total: Tensor):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("fused_head_loss: backward ran twice over one forward (retain_graph is not supported)")
        scale = grad_total[0]  # d out / d loss; the logged elements carry no gradient
        # In place and then dropped here, so autograd can take these buffers as the .grad
        # (no copy) when a parameter has none yet.
        return (*(None if g is None else g.mul_(scale) for g in grads), None, None)


def _accumulate(grad_w: Tensor | None, grad_b: Tensor | None, h: Tensor):
    """Hook: grad_w (V, H) += g^T h, grad_b (V,) += sum_rows g, for g = d loss / d logits (c, V)."""

    def hook(g: Tensor) -> None:
        if grad_w is not None:
            if g.dtype == grad_w.dtype:
                grad_w.addmm_(g.T, h)
            else:  # bf16 matmul (as autocast's backward), accumulated across chunks in fp32
                grad_w.add_(g.T @ h)
        if grad_b is not None:
            grad_b.add_(g.sum(0, dtype=grad_b.dtype))

    return hook
