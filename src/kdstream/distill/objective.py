"""The student and its training loss as one module (DDP wraps this, so every parameter is used
inside forward), with an optional fused output layer + loss that never builds the full logits.

Plain path (chunk=None): logits = lm_head(hidden) for all N = B*(L-1) positions at once, (N, V)
in fp32, and autograd keeps what the loss saves for backward at that size.
Fused path (chunk=c): ``fused_head_loss`` makes each chunk of c positions' logits, its loss and
the gradient w.r.t. those logits in forward, accumulating the head's and the hidden states'
gradients as it goes; peak memory is O(c * V) instead of O(N * V), same values and gradients,
no recomputation. Requires logits = lm_head(base_model(x)) (true for GPT-NeoX, Llama, Qwen,
Mistral, SmolLM2; not for models that post-process logits, e.g. Gemma 2's soft-capping: the
trainer gives those chunk=None, trainer.fused_chunk).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdstream.distill.fused_head import fused_head_loss
from kdstream.distill.losses import CE_SAMPLED, HARD, ce_loss, dense_kd_loss, hard_ce_loss, kd_loss, sampled_ce_loss


def loss_terms(logits: Tensor, targets: Tensor, topk_ids: Tensor | None, topk_logprobs: Tensor | None, *,
               loss: str, temperature: float, tail: str, beta: float, alpha_ce: float,
               teacher_logits: Tensor | None = None) -> Tensor:
    """logits (n, V), targets (n,), top-k (n, k) → tensor [loss, ce, kd] (means over n rows).
    ``teacher_logits`` (n, V): online dense KD, the same divergence over the full vocabulary.

    The one definition of the training loss: distill's Objective and kdstream.torch.KDLoss both
    call it, so a step in another trainer computes what a distill step computes."""
    if loss != "ce" and alpha_ce == 0.0:
        with torch.no_grad():  # logged only: no backward pass through a second softmax
            ce = ce_loss(logits, targets)
    else:
        ce = ce_loss(logits, targets)
    if loss == "ce":
        return torch.stack([ce, ce, torch.zeros_like(ce)])
    if teacher_logits is not None:
        kd = dense_kd_loss(logits, teacher_logits, kind=loss, temperature=temperature, beta=beta)
    elif loss == HARD:  # the kd slot holds the CE on the teacher's top-1, ce the data's tokens
        kd = hard_ce_loss(logits, topk_ids, topk_logprobs)
    elif loss == CE_SAMPLED:
        kd = sampled_ce_loss(logits, topk_ids, topk_logprobs, tail=tail)
    else:
        kd = kd_loss(logits, topk_ids, topk_logprobs, kind=loss, temperature=temperature, tail=tail, beta=beta)
    return torch.stack([(1 - alpha_ce) * kd + alpha_ce * ce, ce, kd])


class Objective(nn.Module):
    """``teacher``: online dense KD (``distill --teacher``): a frozen causal LM run under no_grad
    in every forward, its full-vocabulary logits the target. Kept outside the module tree (not a
    submodule), so DDP/FSDP wrap, checkpoints and ``train()`` touch only the student."""

    def __init__(self, net: nn.Module, *, loss: str, temperature: float, tail: str, beta: float,
                 alpha_ce: float, chunk: int | None, teacher: nn.Module | None = None,
                 cross: str | None = None, alm_temperature: float | None = None,
                 exact_rows: str = "aligned") -> None:
        super().__init__()
        self.net = net
        self.cross = cross  # a cross_tokenizer.CROSS_MODES mode: forward takes ``aligned`` batches
        self.alm_temperature = alm_temperature  # None: the KD temperature
        self.exact_rows = exact_rows  # align.EXACT_ROWS
        self.loss, self.temperature, self.tail, self.beta = loss, temperature, tail, beta
        self.alpha_ce, self.chunk = alpha_ce, chunk
        self._teacher = (teacher,)  # a tuple: nn.Module would register a submodule

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    def _losses(self, logits: Tensor, targets: Tensor, topk_ids: Tensor | None, topk_logprobs: Tensor | None,
                teacher_logits: Tensor | None = None) -> Tensor:
        return loss_terms(logits, targets, topk_ids, topk_logprobs, loss=self.loss, temperature=self.temperature,
                          tail=self.tail, beta=self.beta, alpha_ce=self.alpha_ce, teacher_logits=teacher_logits)

    def _teacher_hidden(self, input_ids: Tensor) -> tuple[Tensor, nn.Module]:
        """(the teacher's final hidden states (N, H_t) at the predicting positions, its output layer)."""
        with torch.no_grad():
            hidden = self.teacher.base_model(input_ids=input_ids).last_hidden_state[:, :-1]  # (B, L-1, H_t)
        return hidden.reshape(-1, hidden.shape[-1]), self.teacher.get_output_embeddings()

    def forward(self, input_ids: Tensor | None = None, topk_ids: Tensor | None = None,
                topk_logprobs: Tensor | None = None, aligned=None, topk_len: Tensor | None = None,
                position_ids: Tensor | None = None) -> Tensor:
        """input_ids (B, L), topk_* (B, L-1, k) → [loss, ce, kd]; row t predicts token t+1.
        ``aligned``: a cross-tokenizer AlignedBatch instead (the student's own tokens, padded).
        ``topk_len`` (B, L-1): a conversation store's rows, 0 where a row is no target position:
        the means run over the target rows only (KD and CE alike: a CE baseline learns the same tokens).
        ``position_ids`` (B, L): packed conversations (conversation_batch.py), restarting at each.

        Only ``loss`` is meant to be differentiated; ce and kd are for logging (on the fused path
        they carry no gradient at all).
        """
        if aligned is not None:
            from kdstream.distill.cross_tokenizer import cross_terms

            logits = self.net(input_ids=aligned.input_ids, attention_mask=aligned.attention_mask).logits  # (B, L, V)
            return cross_terms(logits, aligned, mode=self.cross, loss=self.loss, temperature=self.temperature,
                               tail=self.tail, beta=self.beta, alpha_ce=self.alpha_ce,
                               alm_temperature=self.alm_temperature, exact_rows=self.exact_rows)
        if topk_len is not None:  # padded conversations: cut the batch after its last target row
            last = int(topk_len.any(0).nonzero().max()) + 1 if bool(topk_len.any()) else 1
            input_ids, topk_len = input_ids[:, : last + 1], topk_len[:, :last]
            position_ids = None if position_ids is None else position_ids[:, : last + 1]
            if topk_ids is not None:
                topk_ids, topk_logprobs = topk_ids[:, :last], topk_logprobs[:, :last]
        targets = input_ids[:, 1:].reshape(-1)  # (N,), N = B*(L-1)
        n = targets.shape[0]
        rows = target_rows(topk_len)  # only these rows from here on (None: every row)
        if topk_ids is not None:
            topk_ids = at_rows(topk_ids.reshape(n, -1), rows)  # (N, k)
            topk_logprobs = at_rows(topk_logprobs.reshape(n, -1), rows)  # (N, k)
        t_hidden, t_head = self._teacher_hidden(input_ids) if self.teacher is not None else (None, None)
        targets, t_hidden = at_rows(targets, rows), at_rows(t_hidden, rows)
        if self.chunk is None:
            logits = self.net(input_ids=input_ids, **_packed(position_ids)).logits[:, :-1]  # (B, L-1, V)
            t_logits = None if t_hidden is None else _head(t_hidden, t_head)  # (N, V), no grad
            return self._losses(at_rows(logits.reshape(-1, logits.shape[-1]), rows), targets, topk_ids, topk_logprobs,
                                t_logits)
        hidden = self.net.base_model(input_ids=input_ids, **_packed(position_ids)).last_hidden_state[:, :-1]  # (B, L-1, H)
        hidden = at_rows(hidden.reshape(-1, hidden.shape[-1]), rows)
        head = self.net.get_output_embeddings()  # weight (V, H): tied to the input embedding in some models

        def chunk_losses(logits: Tensor, span: slice) -> Tensor:  # logits (c, V) fp32 → [loss, ce, kd]
            # the teacher's logits of these rows only: memory stays one chunk's, for both models
            t_logits = None if t_hidden is None else _head(t_hidden[span], t_head)  # (c, V)
            return self._losses(logits, targets[span], None if topk_ids is None else topk_ids[span],
                                None if topk_logprobs is None else topk_logprobs[span], t_logits)

        return fused_head_loss(hidden, head.weight, head.bias, chunk_losses, self.chunk)


def target_rows(topk_len: Tensor | None) -> Tensor | None:
    """A conversation batch's (B, L-1) ``topk_len`` → the indices, among its B*(L-1) rows, of the
    target rows (topk_len > 0): the only rows a loss averages over. None (no topk_len): every row."""
    return None if topk_len is None else (topk_len.reshape(-1) > 0).nonzero()[:, 0]


def at_rows(x: Tensor | None, rows: Tensor | None) -> Tensor | None:
    """``x`` (N, …) at ``rows`` (``target_rows``); unchanged for None rows."""
    return x if x is None or rows is None else x[rows]


def _packed(position_ids: Tensor | None) -> dict:
    """Model kwargs for packed sequences: the restarting positions, and no cache (transformers
    builds the block-diagonal mask from position_ids only without one and without attention_mask)."""
    return {} if position_ids is None else {"position_ids": position_ids, "use_cache": False}


def _head(hidden: Tensor, head: nn.Module) -> Tensor:
    """A frozen output layer on (n, H) hidden states → (n, V) fp32 logits, without a graph."""
    with torch.no_grad():
        return F.linear(hidden.to(head.weight.dtype), head.weight, head.bias).float()
