"""distill across tokenizers: a student whose tokenizer differs from the store's teacher.

The loader reads store rows as for any run; ``CrossTargets`` (run by the loader, in its worker
or thread) turns each row into the student's view: the example's text re-tokenized for the
student, aligned with the teacher's tokens (align.py), and the targets the losses need
(aligned_batch.py): chunk log-likelihoods for ``alm``, the teacher's top-k mapped to identical
student tokens for ``exact``. An example whose text does not survive the round trip is skipped
and counted. The step collates each micro-batch's examples (``collate_aligned``) and the
objective runs the student on them with the full logits (``cross_terms``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

CROSS_MODES = ("alm", "exact", "alm+exact")
AUTO = "auto"  # alm+exact when the tokenizers differ; same-tokenizer runs stay token-level
# --loss ce with a student of another tokenizer (chosen by auto, not a --cross-tokenizer value):
# the student's own tokens of each store example's text, no teacher targets (the CE baseline of a
# cross-tokenizer study trains on exactly the examples, and the text, its KD student sees)
CE_ONLY = "ce"
# What a run whose student's tokenizer differs from the store's uses where no flag says otherwise,
# chosen on four tokenizer pairs (benchmarks/cross_tokenizer_pairs.py, docs/distill.md's defaults
# table); a same-tokenizer run keeps alpha_ce 0. alm_temperature None: --temperature.
CROSS_DEFAULTS = {"mode": "alm+exact", "alpha_ce": 0.3, "alm_temperature": 100.0, "exact_map": "prefix",
                  "exact_rows": "aligned"}
ALIGNED, SKIPPED, PAD_ID = "aligned", "skipped", "pad_id"  # the keys of a cross-tokenizer batch


def with_cross_defaults(opts, mode: str | None):
    """``opts`` (DistillOptions) with its unset options (None) filled: from CROSS_DEFAULTS when the
    run trains on cross-tokenizer targets (``mode`` a CROSS_MODES mode), else the token-level ones
    (no CE mixed in)."""
    from dataclasses import replace

    cross = mode in CROSS_MODES
    fill = {}
    if opts.alpha_ce is None:
        fill["alpha_ce"] = CROSS_DEFAULTS["alpha_ce"] if cross else 0.0
    if opts.alm_temperature is None and cross and CROSS_DEFAULTS["alm_temperature"] is not None:
        fill["alm_temperature"] = CROSS_DEFAULTS["alm_temperature"]
    return replace(opts, **fill) if fill else opts


def store_keys(mode: str) -> tuple[str, ...]:
    """The store arrays the targets of ``mode`` are built from."""
    if mode == CE_ONLY:
        return ("input_ids",)
    base = ("input_ids", "target_logprob")
    return base + ("topk_ids", "topk_logprobs") if "exact" in mode else base


@dataclass
class CrossTargets:
    """rows ({key: (B, ...) array} of store rows) → {ALIGNED: [AlignedExample], SKIPPED: {reason: n},
    PAD_ID: the student's padding id}.
    Picklable: built once in the main process (the byte tables and the vocabulary map), sent to
    each DataLoader worker."""

    mode: str  # one of CROSS_MODES
    aligner: object  # align.Aligner
    vocab_map: np.ndarray | None  # (V_t,) the student id of each teacher id, -1 if none (exact modes)
    pad_id: int  # the student's pad (or eos) id: fills the batch past each example's end
    merge: bool = True  # vocab_map sends two teacher ids to one student id (aligned_batch.map_repeats)
    exact_rows: str = "aligned"  # align.EXACT_ROWS: which positions get an exact row
    # (V_t,) the exact map where the student's next token starts a piece with a lead "▁" that the
    # teacher's tokens there lack (after a special token, an answer's start): teacher "I" -> "▁I"
    lead_map: np.ndarray | None = None

    @classmethod
    def build(cls, teacher_tokenizer, student_tokenizer, mode: str, vocab_map: str = "identical",
              exact_rows: str = "aligned") -> CrossTargets:
        """``vocab_map``: the rule of the exact map (align.VOCAB_MAPS); ``exact_rows``: align.EXACT_ROWS."""
        from kdstream.text.align import Aligner

        aligner = Aligner(teacher_tokenizer, student_tokenizer)
        pad = next((t for t in (student_tokenizer.pad_token_id, student_tokenizer.eos_token_id) if t is not None), 0)
        from kdstream.distill.aligned_batch import map_repeats

        vmap = aligner.vocab_map(vocab_map) if "exact" in mode else None
        lead = aligner.vocab_map(vocab_map, lead=b" ") if "exact" in mode else None
        return cls(mode, aligner, vmap, int(pad), merge=vmap is not None and map_repeats(vmap), exact_rows=exact_rows,
                   lead_map=lead)

    @property
    def skip_reasons(self) -> tuple[str, ...]:
        """The reasons its SKIPPED counts can name (train_summary.json reports each, 0 included)."""
        from kdstream.text.align import SKIP_REASONS

        return SKIP_REASONS

    def __call__(self, rows: dict[str, np.ndarray]) -> dict:
        from kdstream.distill.aligned_batch import aligned_examples
        from kdstream.text.align import Skip

        aligned = self.aligner.align_rows(rows["input_ids"])
        skipped = Counter(r.reason for r in aligned.results if isinstance(r, Skip))
        exact = self.vocab_map is not None
        # CE_ONLY reads no teacher targets: the chunk log-likelihoods are zeros, never used
        examples = aligned_examples(aligned, rows.get("target_logprob"), rows["topk_ids"] if exact else None,
                                    rows["topk_logprobs"] if exact else None, self.vocab_map, merge=self.merge,
                                    same_token=self.exact_rows == "same_token",
                                    lead=(self.lead_map, self.aligner.s.lengths) if exact else None)
        return {ALIGNED: examples, SKIPPED: dict(skipped), PAD_ID: self.pad_id}


def cross_terms(logits, batch, *, mode: str, loss: str, temperature: float, tail: str, beta: float,
                alpha_ce: float, alm_temperature: float | None = None, exact_rows: str = "aligned"):
    """logits (B, L, V) of the student on batch.input_ids → tensor [loss, ce, kd] (AlignedBatch).

    ``mode`` CE_ONLY: loss = ce, kd = 0 (``--loss ce``: no teacher term, whatever ``alpha_ce``).

    kd: ``alm`` (chunk likelihoods, binary KL at tau = ``alm_temperature``, default
    ``temperature``, times tau), ``exact`` (``loss`` over the teacher's top-k mapped to identical
    student tokens) or their mean; ce: the student's own next-token CE over its real (unpadded)
    tokens, mixed in by ``alpha_ce``. ``exact_rows`` "same_token": the exact term is the mean over
    the student's real positions of the divergence at its exact rows (same-token positions) and
    the CE at the others.

    Why times tau: for tau >> |l| a chunk's Bernoulli parameter is 1 - |l|/tau, and the binary
    divergence's gradient w.r.t. the student's chunk log-likelihood is about (l_S - l_T)/(tau |l|):
    scaled by tau it is (l_S - l_T)/|l| whatever tau, as KD's T^2 keeps its scale (at tau = 1,
    unchanged)."""
    import torch

    from kdstream.distill.cross_losses import alm_loss, exact_map_loss, student_log_normalizer, student_token_logprobs

    lse = student_log_normalizer(logits)  # (B, L-1), shared by every term
    lp = student_token_logprobs(logits, batch.input_ids, lse)  # (B, L-1)
    real = batch.target_mask[:, 1:]  # (B, L-1) a next token the student learns (a real one; a conversation's answers)
    ce = -(lp * real).sum() / real.sum().clamp(min=1)
    if mode == CE_ONLY:
        return torch.stack([ce, ce.detach(), torch.zeros_like(ce)])
    parts = []
    if "alm" in mode:
        tau = temperature if alm_temperature is None else alm_temperature
        parts.append(tau * alm_loss(logits, batch, temperature=tau, token_logprobs=lp))
    if "exact" in mode:
        exact = exact_map_loss(logits, batch, kind=loss, temperature=temperature, tail=tail, beta=beta,
                               log_normalizer=lse)
        if exact_rows == "same_token":  # the other positions learn from their own next token
            rest = real.clone()
            rest[batch.exact_batch, batch.exact_row] = False
            exact = (exact * batch.exact_row.shape[0] - (lp * rest).sum()) / real.sum().clamp(min=1)
        parts.append(exact)
    kd = torch.stack(parts).mean()
    if alpha_ce == 0.0:
        ce = ce.detach()
    return torch.stack([(1 - alpha_ce) * kd + alpha_ce * ce, ce, kd])

