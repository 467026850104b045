"""Per-example features that explain and predict memorization.

The paper's predictors of student memorization are the teacher's perplexity, the CE baseline's
perplexity, the teacher–baseline KL and the zlib entropy of the text; Min-K% Prob (Shi et al.
2024) and Carlini et al.'s (2021) zlib ratio are the usual membership-inference scores beside them.

Conventions: ``input_ids`` is (S, L) int64, one fixed-length example per row. Log-prob row t
predicts token t + 1, exactly as in a teacher store, so per-token arrays are (S, L-1). Logs are
natural. Model passes run in fp32 under ``torch.no_grad()``, one batch at a time, and the largest
tensor ever alive is that batch's (B, L, V) logits (plus same-sized temporaries of one op).
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from kdstream.distill.losses import student_distribution, teacher_distribution
from kdstream.text.token_bytes import bits_per_byte


def zlib_entropy(text: str) -> int:
    """Bytes of ``zlib.compress(text.encode("utf-8"))`` at zlib's default level (6).

    The paper's (and Carlini et al. 2021's) "zlib entropy": repetitive, predictable text
    compresses well and scores low.
    """
    return len(zlib.compress(text.encode("utf-8")))


def _as_tensor(x, dtype: torch.dtype) -> Tensor:
    return x.to(dtype) if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


def _batched_logits(model, input_ids: Tensor, batch_size: int) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield (first row, fp32 logits (B, L-1, V), next-token targets (B, L-1)) batch by batch.

    The last position's logits predict nothing inside the example and are dropped. The model is
    put in eval mode (no dropout) for the pass and restored afterwards.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be (S, L) with L >= 2, got shape {tuple(input_ids.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                batch = input_ids[start : start + batch_size].to(device)  # (B, L)
                logits = model(input_ids=batch).logits[:, :-1].float()  # (B, L-1, V)
                yield start, logits, batch[:, 1:]
                del logits
    finally:
        model.train(was_training)


def _target_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """(B, L-1, V) logits, (B, L-1) ids -> (B, L-1) log p(target).

    gather − logsumexp instead of log_softmax, so no second (B, L-1, V) tensor is kept.
    """
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def token_logprobs(model, input_ids, batch_size: int = 16) -> np.ndarray:
    """(S, L) int64 token ids -> (S, L-1) float32 log-prob of each next token under a HF causal LM.

    Row t is log p(input_ids[t+1] | input_ids[:t+1]), aligned with a store's ``target_logprob``.
    """
    ids = _as_tensor(input_ids, torch.long)
    out = np.empty((ids.shape[0], ids.shape[1] - 1), dtype=np.float32)
    for start, logits, targets in _batched_logits(model, ids, batch_size):
        out[start : start + len(targets)] = _target_logprobs(logits, targets).cpu().numpy()
    return out


def perplexity(logprobs: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """(S, L-1) next-token log-probs -> (S,) exp(−mean log-prob over rows [start, stop)).

    Rows are prediction positions: to score the tokens from index p on, pass ``start = p - 1``.
    """
    window = np.asarray(logprobs, dtype=np.float64)[:, start:stop]
    if window.shape[1] == 0:
        raise ValueError(f"no positions in [{start}, {stop}) of logprobs with {np.shape(logprobs)[1]} positions")
    return np.exp(-window.mean(axis=1))


def min_k_percent(logprobs: np.ndarray, k: float = 0.2) -> np.ndarray:
    """(S, L-1) log-probs -> (S,) Min-K% Prob: mean of each row's lowest k-fraction log-probs.

    Shi et al. 2024: members have few very unlikely tokens, so a higher (less negative) score
    suggests a training example. Takes floor(k * n) tokens as their reference code does, and at
    least one.
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    lp = np.asarray(logprobs, dtype=np.float64)
    count = max(1, int(k * lp.shape[1]))
    return np.sort(lp, axis=1)[:, :count].mean(axis=1)


def zlib_ratio(ppl: np.ndarray, zlib_bytes: np.ndarray) -> np.ndarray:
    """(S,) perplexities (not log), (S,) zlib entropies in bytes -> (S,) log(ppl) / zlib entropy.

    Carlini et al. 2021's "zlib" score (their code: ``np.log(perplexity) / zlib_entropy``): the
    model's surprise relative to a generic compressor's; low values flag text the model finds
    far easier than its compressibility explains.
    """
    return np.log(np.asarray(ppl, dtype=np.float64)) / np.asarray(zlib_bytes, dtype=np.float64)


def topk_kl(model_logprobs_full: Tensor, topk_ids: Tensor, topk_logprobs: Tensor) -> Tensor:
    """KL(teacher ‖ model) per row from the teacher's stored top-k: (N, V), (N, k), (N, k) -> (N,).

    Both sides are reduced to k + 1 classes, the teacher's top-k tokens plus one tail class with
    the rest of the mass (``teacher_distribution`` / ``student_distribution`` at T = 1, tail
    "bucket", the training loss's view). This is exact at T = 1 for the k + 1 classes and a lower
    bound on the full-vocabulary KL (merging classes never increases a KL); with k = V it is the
    dense KL. ``model_logprobs_full`` may be log-probs or raw logits (it is renormalised).

    Unlike ``kd_loss`` there is no floor on the teacher's tail (forward KL stays finite when it
    is 0); where the model has no tail (k = V) the teacher's float-noise tail is dropped as there.
    """
    log_m = student_distribution(model_logprobs_full, topk_ids, 1.0, "bucket")  # (N, k+1)
    log_t = teacher_distribution(topk_logprobs, 1.0, "bucket")  # (N, k+1)
    no_tail = torch.isneginf(log_m[:, -1:])  # (N, 1)
    log_t = torch.log_softmax(torch.cat([log_t[:, :-1], log_t[:, -1:].masked_fill(no_tail, -math.inf)], -1), -1)
    p = log_t.exp()
    support = p > 0  # classes the teacher gives no mass contribute exactly 0 (no 0 * inf)
    diff = torch.where(support, log_t, 0.0) - torch.where(support, log_m, 0.0)
    return torch.where(support, p * diff, 0.0).sum(-1)


def model_features(model, input_ids, *, prefix_len: int, suffix_len: int | None = None,
                   topk_ids=None, topk_logprobs=None, token_bytes=None, batch_size: int = 16) -> dict[str, np.ndarray]:
    """One pass of ``model`` over (S, L) examples -> dict of (S,) float64 features.

    ppl: perplexity of tokens 1..L-1. suffix_ppl: perplexity of the suffix tokens
    [prefix_len, prefix_len + suffix_len) (to the end when ``suffix_len`` is None), the tokens
    extraction must reproduce. min_k: Min-K% Prob (k = 0.2) over all positions.
    teacher_kl (only with the teacher's stored ``topk_ids`` / ``topk_logprobs``, (S, L-1, k)):
    mean over positions of KL(teacher ‖ model) (``topk_kl``), computed batch by batch from the
    same logits, so the model runs once. With the CE baseline as ``model`` this is the paper's
    teacher–baseline KL. bits_per_byte (only with ``token_bytes``, (S, L-1) UTF-8 bytes of tokens
    1..L-1): ``bits_per_byte`` over the positions ppl covers.
    """
    ids = _as_tensor(input_ids, torch.long)
    s, length = ids.shape
    stop = None if suffix_len is None else prefix_len + suffix_len
    if not 1 <= prefix_len < length or (stop is not None and (suffix_len < 1 or stop > length)):
        raise ValueError(f"prefix_len {prefix_len} / suffix_len {suffix_len} do not fit examples of {length} tokens")
    if (topk_ids is None) != (topk_logprobs is None):
        raise ValueError("pass both topk_ids and topk_logprobs, or neither")
    with_kl = topk_ids is not None
    if with_kl:
        t_ids, t_lp = _as_tensor(topk_ids, torch.long), _as_tensor(topk_logprobs, torch.float32)
        if t_ids.shape[:2] != (s, length - 1) or t_lp.shape != t_ids.shape:
            raise ValueError(f"topk arrays must be (S={s}, L-1={length - 1}, k), got "
                             f"{tuple(t_ids.shape)} and {tuple(t_lp.shape)}")
        kl = np.empty(s, dtype=np.float64)
    lp = np.empty((s, length - 1), dtype=np.float32)
    for start, logits, targets in _batched_logits(model, ids, batch_size):
        b, n, v = logits.shape
        rows = slice(start, start + b)
        lp[rows] = _target_logprobs(logits, targets).cpu().numpy()
        if with_kl:
            k = t_ids.shape[-1]
            per_pos = topk_kl(logits.reshape(b * n, v), t_ids[rows].to(logits.device).reshape(b * n, k),
                              t_lp[rows].to(logits.device).reshape(b * n, k))  # (B * (L-1),)
            kl[rows] = per_pos.reshape(b, n).double().mean(-1).cpu().numpy()
    out = {
        "ppl": perplexity(lp),
        "suffix_ppl": perplexity(lp, start=prefix_len - 1, stop=None if stop is None else stop - 1),
        "min_k": min_k_percent(lp),
    }
    if token_bytes is not None:
        if np.shape(token_bytes) != (s, length - 1):
            raise ValueError(f"token_bytes must be (S={s}, L-1={length - 1}), got {np.shape(token_bytes)}")
        # CE of tokens 1..L-1 in bits per byte of those tokens (NaN for a row without bytes)
        out["bits_per_byte"] = bits_per_byte(-np.asarray(lp, np.float64).sum(axis=1),
                                             np.asarray(token_bytes, np.float64).sum(axis=1))
    if with_kl:
        out["teacher_kl"] = kl
    return out


def text_features(tokenizer, input_ids) -> dict[str, np.ndarray]:
    """(S, L) token ids -> {"zlib_entropy": (S,) int64, "text_bytes": (S,) int64} of each example's
    decoded text: its zlib entropy and its UTF-8 length, what the zlib entropy of a window of L
    tokens grows with (a tokenizer that packs more bytes into a token gives its text a higher one).

    Decoded with special tokens kept (``skip_special_tokens=False``), so the text is exactly what
    the tokens spell, document separators included.
    """
    rows = np.asarray(input_ids).tolist()
    texts = tokenizer.batch_decode(rows, skip_special_tokens=False)
    return {"zlib_entropy": np.array([zlib_entropy(t) for t in texts], dtype=np.int64),
            "text_bytes": np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int64)}
