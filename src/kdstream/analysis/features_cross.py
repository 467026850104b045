"""Features of a model whose tokenizer differs from the store's (a cross-tokenizer baseline).

Per-token figures of two tokenizers do not compare (a token is not the same unit on both sides),
so what the classifier reads across tokenizers is in bytes of the example's text:

- ``bits_per_byte``: the model's CE on its own tokens 1..L_s-1 of the text, in bits per UTF-8
  byte of those tokens (the same definition as the teacher's ``bits_per_byte`` column);
- ``teacher_llr_per_byte`` (only here): over the usable chunks of the alignment (text/align.py:
  byte ranges both tokenizations cut at, token 0 of either side excluded), the teacher's chunk
  log-likelihood (from the store's ``target_logprob``, no teacher run) minus the model's, in bits
  per byte of those chunks. On the example's own text this is a one-sample estimate of the
  per-byte KL(teacher ‖ model), the cross-tokenizer stand-in for the top-k ``teacher_kl``.

``ppl`` and ``min_k`` are on the model's own tokens (kept for a look, not comparable with the
teacher's); ``suffix_ppl`` and ``teacher_kl`` are NaN (the suffix and the top-k are in the
teacher's tokens). An example that does not align (align.SKIP_REASONS) gets NaN everywhere.
"""
from __future__ import annotations

import numpy as np
import torch

from kdstream.analysis.features import min_k_percent
from kdstream.analysis.files import LLR_COLUMN
from kdstream.text.token_bytes import bits_per_byte

CROSS_MODE = "cross_tokenizer"  # features summary.json "mode"


def cross_model_features(model, aligner, input_ids: np.ndarray, target_logprob: np.ndarray, pad_id: int,
                         batch_size: int = 16) -> dict[str, np.ndarray]:
    """(S, L_t) teacher ids and (S, L_t-1) store target_logprob → dict of (S,) float64: ppl,
    bits_per_byte, min_k, teacher_llr_per_byte (see the module docstring); ``aligner``:
    align.Aligner(teacher tokenizer, model tokenizer)."""
    from kdstream.distill.aligned_batch import teacher_chunk_logprobs
    from kdstream.text.align import Skip

    s = len(input_ids)
    out = {k: np.full(s, np.nan) for k in ("ppl", "bits_per_byte", "min_k", LLR_COLUMN)}
    aligned = aligner.align_batch(input_ids)
    ok = [i for i, a in enumerate(aligned) if not isinstance(a, Skip) and len(a.student_ids) >= 2]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(ok), batch_size):
            rows = ok[b : b + batch_size]
            width = max(len(aligned[i].student_ids) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, i in enumerate(rows):
                n = len(aligned[i].student_ids)
                ids[j, :n], mask[j, :n] = torch.from_numpy(aligned[i].student_ids), 1
            with torch.no_grad():  # right padding: a causal model's real positions see no pad
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
                lp = (logits.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
                      - torch.logsumexp(logits, -1)).double().cpu().numpy()  # (B, W-1)
            for j, i in enumerate(rows):
                a = aligned[i]
                own = lp[j, : len(a.student_ids) - 1]  # (L_s-1,) log p of tokens 1..L_s-1
                spans = a.student_spans
                nbytes = (spans[1:, 1] - spans[1:, 0]).sum()
                out["ppl"][i] = np.exp(-own.mean())
                out["min_k"][i] = min_k_percent(own[None])[0]
                out["bits_per_byte"][i] = bits_per_byte(-own.sum(), nbytes)
                out[LLR_COLUMN][i] = _llr_per_byte(a, own, teacher_chunk_logprobs(a, target_logprob[i]))
    finally:
        model.train(was_training)
    return out


def _llr_per_byte(a, own: np.ndarray, teacher_chunks: np.ndarray) -> float:
    """Σ over usable chunks (teacher − model log-likelihood) ÷ ln 2 ÷ their bytes (NaN: none)."""
    # the model's chunk log-likelihoods: token s (s >= 1) has log-prob own[s - 1]
    chunk = a.student_chunk[1:]
    model_chunks = np.bincount(chunk[chunk >= 0], weights=own[chunk >= 0], minlength=a.num_chunks)
    use = a.usable
    nbytes = (a.byte_bounds[1:] - a.byte_bounds[:-1])[use].sum()
    if nbytes <= 0:
        return float("nan")
    return float((teacher_chunks[use] - model_chunks[use]).sum() / (np.log(2.0) * nbytes))
