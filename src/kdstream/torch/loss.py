"""The distillation loss as an nn.Module for anyone's training loop: the same function ``distill``
trains with (``distill.objective.loss_terms``), on a batch from ``StoreDataset`` + ``collate``."""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from kdstream.distill.fused_head import auto_chunk, fused_head_loss
from kdstream.distill.loss_names import CE_SAMPLED, HARD, KD_LOSSES, TAILS
from kdstream.distill.objective import at_rows, loss_terms, target_rows

KINDS = (*KD_LOSSES, CE_SAMPLED, HARD, "ce")


class KDLoss(nn.Module):
    """``(1 - alpha_ce) * D(teacher, student) + alpha_ce * CE``, mean over positions, as ``distill``.

    kind: forward_kl | reverse_kl | jsd (``beta`` weights it) over the store's top-k plus a tail
    class (``tail="bucket"``) or the renormalised top-k (``"renormalize"``), at ``temperature``
    (Hinton's T² factor included); ce_sampled for a sampled store; hard (CE on the teacher's top-1
    token at each position, no temperature); ce (no teacher: a baseline).
    After each call, ``last`` holds the detached (loss, ce, kd) for logging.
    """

    def __init__(self, kind: str = "forward_kl", temperature: float = 1.0, tail: str = "bucket",
                 alpha_ce: float = 0.0, beta: float = 0.5, chunk: int | None = None) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"KDLoss kind {kind!r}: choose one of {', '.join(KINDS)}")
        if tail not in TAILS:
            raise ValueError(f"KDLoss tail {tail!r}: choose one of {', '.join(TAILS)}")
        if not temperature > 0 or not 0.0 <= alpha_ce <= 1.0 or not 0.0 <= beta <= 1.0:
            raise ValueError(f"KDLoss needs temperature > 0, alpha_ce and beta in [0, 1]; got "
                             f"{temperature}, {alpha_ce}, {beta}")
        self.kind, self.temperature, self.tail, self.alpha_ce, self.beta = kind, temperature, tail, alpha_ce, beta
        self.chunk = chunk  # from_hidden: positions per chunk (None: fused_head.auto_chunk(V))
        self.last: Tensor | None = None

    def _targets(self, batch: Mapping[str, Tensor], positions: int):
        """(targets (N,), topk_ids (N, k) | None, topk_logprobs (N, k) | None, rows), shapes checked
        against the student's ``positions`` = (B, L-1). ``rows``: a conversation store's target
        rows (``topk_len`` > 0) as indices into the N, the three others already restricted to them;
        None for a text store (every row)."""
        targets, ids, logprobs = self._all_targets(batch, positions)
        rows = target_rows(batch.get("topk_len"))
        return at_rows(targets, rows), at_rows(ids, rows), at_rows(logprobs, rows), rows

    def _all_targets(self, batch: Mapping[str, Tensor], positions: int):
        if "input_ids" not in batch:
            raise ValueError(f"KDLoss: the batch has no input_ids (keys: {', '.join(batch)}): pass what "
                             "StoreDataset + collate return")
        ids = batch["input_ids"]  # (B, L)
        B, L = ids.shape
        if positions != (B, L - 1):
            raise ValueError(f"KDLoss: the student gives {positions[0]}x{positions[1]} positions but the batch's "
                             f"input_ids are {B}x{L} (expected {B}x{L - 1} predictions: drop the last position)")
        targets = ids[:, 1:].reshape(-1)  # (N,) row t predicts token t+1
        if self.kind == "ce":
            return targets, None, None
        missing = [k for k in ("topk_ids", "topk_logprobs") if k not in batch]
        if missing:
            raise ValueError(f"KDLoss: the batch has no {' or '.join(missing)} (keys: {', '.join(batch)}): the "
                             "teacher's columns were dropped on the way (HF Trainer: remove_unused_columns=False)")
        topk_ids, topk_logprobs = batch["topk_ids"], batch["topk_logprobs"]
        if topk_ids.shape[:2] != (B, L - 1) or topk_logprobs.shape != topk_ids.shape:
            raise ValueError(f"KDLoss: topk_ids {tuple(topk_ids.shape)} and topk_logprobs "
                             f"{tuple(topk_logprobs.shape)} must both be ({B}, {L - 1}, k) for input_ids ({B}, {L})")
        n = B * (L - 1)
        return targets, topk_ids.reshape(n, -1), topk_logprobs.reshape(n, -1)

    def _terms(self, logits: Tensor, targets: Tensor, topk_ids, topk_logprobs) -> Tensor:
        return loss_terms(logits, targets, topk_ids, topk_logprobs, loss=self.kind, temperature=self.temperature,
                          tail=self.tail, beta=self.beta, alpha_ce=self.alpha_ce)

    def forward(self, student_logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """student_logits (B, L, V) as a causal LM returns them (the last position, which predicts
        nothing in the store, is dropped) or (B, L-1, V); batch from ``collate`` → scalar loss."""
        logits = _predicting(student_logits, batch)  # (B, L-1, V)
        targets, ids, logprobs, rows = self._targets(batch, tuple(logits.shape[:2]))
        self._check_vocab(logits.shape[-1], ids)
        out = self._terms(at_rows(logits.reshape(-1, logits.shape[-1]), rows), targets, ids, logprobs)  # [loss, ce, kd]
        self.last = out.detach()
        return out[0]

    def from_hidden(self, hidden: Tensor, lm_head: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        """The same loss from the final hidden states (B, L, H) or (B, L-1, H) and the output layer
        (weight (V, H), optional bias), never holding all positions' (N, V) logits: the output layer
        and the loss run chunk by chunk (distill.fused_head), gradients reach hidden and lm_head
        through autograd. Peak memory: one chunk's logits instead of N positions'."""
        hidden = _predicting(hidden, batch)  # (B, L-1, H)
        targets, ids, logprobs, rows = self._targets(batch, tuple(hidden.shape[:2]))
        hidden = at_rows(hidden.reshape(-1, hidden.shape[-1]), rows)
        weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
        self._check_vocab(weight.shape[0], ids)
        if hidden.shape[-1] != weight.shape[1]:
            raise ValueError(f"KDLoss.from_hidden: hidden size {hidden.shape[-1]} != lm_head input size {weight.shape[1]}")

        def chunk_terms(logits: Tensor, rows: slice) -> Tensor:  # logits (c, V) fp32 → [loss, ce, kd]
            return self._terms(logits, targets[rows], None if ids is None else ids[rows],
                               None if logprobs is None else logprobs[rows])

        chunk = self.chunk or auto_chunk(weight.shape[0])
        out = fused_head_loss(hidden, weight, bias, chunk_terms, chunk)
        self.last = out.detach()
        return out[0]

    @staticmethod
    def _check_vocab(v: int, ids: Tensor | None) -> None:
        if ids is not None and ids.numel() and int(ids.max()) >= v:
            raise ValueError(f"KDLoss: the store lists token id {int(ids.max())} but the student has {v} output "
                             "classes: use a student with the teacher's tokenizer (kdstream.torch.check_compatible)")


def _predicting(x: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """x (B, L, …) or (B, L-1, …) → the (B, L-1, …) positions that predict input_ids[:, 1:]."""
    if "input_ids" in batch and x.dim() >= 2 and x.shape[1] == batch["input_ids"].shape[1]:
        return x[:, :-1]
    return x

