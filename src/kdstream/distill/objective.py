"""The student and its training loss as one module (DDP wraps this, so every parameter is used
inside forward), with an optional fused, chunked loss that never builds the full logits.

Plain path: logits = lm_head(hidden) for all B*(L-1) positions at once, (N, V) in fp32.
Chunked path: the positions are cut into chunks of ``chunk`` rows; each chunk's logits are made,
turned into its loss and freed, under activation checkpointing, so backward recomputes one
chunk's logits at a time. Peak memory is O(chunk * V) instead of O(N * V), same values.
Requires logits = lm_head(base_model(x)) (true for GPT-NeoX, Llama, Qwen, Mistral; not for
models that post-process logits, e.g. Gemma's soft-capping: use chunk=None there).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kdstream.distill.losses import ce_loss, kd_loss


class Objective(nn.Module):
    def __init__(self, net: nn.Module, *, loss: str, temperature: float, tail: str, beta: float,
                 alpha_ce: float, chunk: int | None) -> None:
        super().__init__()
        self.net = net
        self.loss, self.temperature, self.tail, self.beta = loss, temperature, tail, beta
        self.alpha_ce, self.chunk = alpha_ce, chunk

    def _losses(self, logits: Tensor, targets: Tensor, topk_ids: Tensor | None, topk_logprobs: Tensor | None) -> Tensor:
        """logits (n, V), targets (n,), top-k (n, k) → tensor [loss, ce, kd] (means over n rows)."""
        if self.loss != "ce" and self.alpha_ce == 0.0:
            with torch.no_grad():  # logged only: no backward pass through a second softmax
                ce = ce_loss(logits, targets)
        else:
            ce = ce_loss(logits, targets)
        if self.loss == "ce":
            return torch.stack([ce, ce, torch.zeros_like(ce)])
        kd = kd_loss(logits, topk_ids, topk_logprobs, kind=self.loss, temperature=self.temperature,
                     tail=self.tail, beta=self.beta)
        return torch.stack([(1 - self.alpha_ce) * kd + self.alpha_ce * ce, ce, kd])

    def forward(self, input_ids: Tensor, topk_ids: Tensor | None = None, topk_logprobs: Tensor | None = None) -> Tensor:
        """input_ids (B, L), topk_* (B, L-1, k) → [loss, ce, kd]; row t predicts token t+1."""
        targets = input_ids[:, 1:].reshape(-1)  # (N,), N = B*(L-1)
        if topk_ids is not None:
            topk_ids = topk_ids.reshape(targets.shape[0], -1)  # (N, k)
            topk_logprobs = topk_logprobs.reshape(targets.shape[0], -1)  # (N, k)
        if self.chunk is None or targets.shape[0] <= self.chunk:
            # One chunk's worth of positions: nothing to save by recomputing in backward.
            logits = self.net(input_ids=input_ids).logits[:, :-1]  # (B, L-1, V)
            return self._losses(logits.reshape(targets.shape[0], -1), targets, topk_ids, topk_logprobs)
        hidden = self.net.base_model(input_ids=input_ids).last_hidden_state[:, :-1]  # (B, L-1, H)
        hidden = hidden.reshape(targets.shape[0], -1)  # (N, H)
        head = self.net.get_output_embeddings()
        n = targets.shape[0]
        total = hidden.new_zeros(3)
        for s in range(0, n, self.chunk):
            e = min(s + self.chunk, n)
            part = checkpoint(
                self._chunk, hidden[s:e], head.weight, head.bias, targets[s:e],
                None if topk_ids is None else topk_ids[s:e], None if topk_logprobs is None else topk_logprobs[s:e],
                use_reentrant=False,
            )
            total = total + part * ((e - s) / n)  # chunk means → mean over all N positions
        return total

    def _chunk(self, h, weight, bias, targets, topk_ids, topk_logprobs) -> Tensor:
        logits = nn.functional.linear(h, weight, bias)  # (chunk, V): the only vocabulary-sized tensor
        return self._losses(logits, targets, topk_ids, topk_logprobs)
