"""The cross-tokenizer targets of one example (numpy, built by a loader worker from a store row
and its ``Alignment``) and their padded batch (torch), the input of ``cross_losses``.

Per example: the student's input ids and the chunk of each of its tokens, the teacher's chunk
log-likelihoods (sums of the store's ``target_logprob``, float64 so a long chunk keeps its digits)
and, for the ``exact`` loss, the teacher's top-k at chunk starts mapped to student ids. A batch
flattens the chunks of all its examples into one axis of N chunks (example b's chunk c is
``offset_b + c``) and pads the student tokens to the longest example with a mask.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from kdstream.text.align import AlignedRows, Alignment, offsets

if TYPE_CHECKING:  # torch is imported where a batch is built: a worker that only aligns needs none
    import torch


@dataclass(frozen=True)
class AlignedExample:
    """One example's targets. C chunks, P exact rows, k the store's top-k.

    student_ids (L_s,) int64; student_chunk (L_s,) int64 chunk of each student token.
    teacher_chunk_logprob (C,) float64: the teacher's log-likelihood of each chunk (0 where unusable).
    usable (C,) bool. exact_rows (P,) int64: student positions s whose next token (s+1) starts
    where the teacher's next token does. exact_ids (P, k) int64: the teacher's top-k at that
    position as student ids, -1 where the teacher token has no byte-identical student token.
    exact_logprobs (P, k) float32: their teacher log-probs, -inf where unmapped (that mass joins
    the tail). Without a top-k (ALM only) P = k = 0.
    student_bytes (L_s,) int64: the text's bytes each student token covers (its span), for bits
    per byte (held_out.py); not batched.
    targets (L_s,) bool: the tokens the student learns (CE, bits per byte); None: every token. A
    conversation's are its answers' (cross_conversations.py).
    """

    student_ids: np.ndarray
    student_chunk: np.ndarray
    teacher_chunk_logprob: np.ndarray
    usable: np.ndarray
    exact_rows: np.ndarray
    exact_ids: np.ndarray
    exact_logprobs: np.ndarray
    student_bytes: np.ndarray | None = None
    targets: np.ndarray | None = None

    def target_mask(self) -> np.ndarray:
        """(L_s,) bool: ``targets``, or every token."""
        return np.ones(len(self.student_ids), bool) if self.targets is None else self.targets


def teacher_chunk_logprobs(alignment: Alignment, target_logprob: np.ndarray) -> np.ndarray:
    """(C,) float64: sum over each chunk's teacher tokens j of target_logprob[j - 1] (0 where unusable).

    target_logprob (L_t - 1,): the store's log-prob of input_ids[t + 1] at row t; token 0 has none.
    """
    return chunk_logprobs(AlignedRows.of(alignment), [target_logprob])


def chunk_logprobs(aligned: AlignedRows, target_logprob) -> np.ndarray:
    """(N,) float64: ``teacher_chunk_logprobs`` of every chunk of a batch's aligned rows.

    target_logprob: per input row (B rows, (B, L_t - 1) or a list), None for zeros (no teacher
    targets). One bincount over the batch adds each chunk's terms in the per-row order.
    """
    n = int(aligned.chunk_off[-1])
    if target_logprob is None or not len(aligned.rows):
        return np.zeros(n)
    lp, lp_at = _flat_rows(target_logprob, np.float64)
    t_row = np.repeat(np.arange(len(aligned.rows)), np.diff(aligned.teacher_off))  # (T,)
    j = np.arange(len(t_row)) - aligned.teacher_off[t_row]  # (T,) position in its row
    keep = (j >= 1) & (aligned.teacher_chunk >= 0)  # token 0 of a row has no log-prob
    chunk = aligned.teacher_chunk + aligned.chunk_off[t_row]  # (T,) batch chunk
    out = np.bincount(chunk[keep], weights=lp[(lp_at[aligned.rows[t_row]] + j - 1)[keep]], minlength=n)
    return np.where(aligned.usable, out, 0.0)


def _flat_rows(arrays, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row store arrays ((B, L, ...), else a list of B) as one array of their rows one after the
    other (a view of the loader's contiguous batch), and (B+1,) where each row starts in it."""
    if isinstance(arrays, np.ndarray):
        return np.asarray(arrays.reshape(-1, *arrays.shape[2:]), dtype), np.arange(len(arrays) + 1) * arrays.shape[1]
    rows = [np.asarray(a, dtype) for a in arrays]
    return np.concatenate(rows), np.cumsum([0, *map(len, rows)])


def aligned_example(alignment: Alignment, target_logprob: np.ndarray, topk_ids: np.ndarray | None = None,
                    topk_logprobs: np.ndarray | None = None, vocab_map: np.ndarray | None = None,
                    merge: bool = True, same_token: bool = False) -> AlignedExample:
    """The targets of one store row (``store[i]``'s target_logprob, topk_ids, topk_logprobs):
    ``aligned_examples`` of a batch of one."""
    one = (lambda x: None if x is None else [x])
    return aligned_examples(AlignedRows.of(alignment), [target_logprob], one(topk_ids), one(topk_logprobs),
                            vocab_map, merge, same_token)[0]


def aligned_examples(aligned: AlignedRows, target_logprob=None, topk_ids=None, topk_logprobs=None,
                     vocab_map: np.ndarray | None = None, merge: bool = True,
                     same_token: bool = False, lead: tuple | None = None) -> list[AlignedExample]:
    """The targets of a batch's aligned rows (``Aligner.align_rows``), one AlignedExample per aligned
    row in order; the store arrays are per input row ((B, ...) or lists): target_logprob (None:
    zeros, for a run without teacher targets), topk_ids and topk_logprobs (None: ALM only).

    The exact rows: at every usable chunk, the teacher's row ta - 1 (predicting the chunk's first
    teacher token) against the student's row sa - 1 (predicting its first student token); both
    predict text that starts at the same byte. Rows with no mapped id are left out.
    ``same_token``: only chunks of one teacher and one student token (both next tokens are the
    same bytes: align.EXACT_ROWS).
    ``lead``: (lead map (V_t,), the student's token byte lengths (V_s,)): a row whose student
    token starts a piece with a lead byte its span does not count (SentencePiece's "▁" after a
    special token) maps the teacher's top-k through the lead map (cross_tokenizer.CrossTargets).
    ``merge=False`` skips ``merge_repeated_ids`` (a sort of the (P, k) ids, the largest cost here
    on long examples): right only for a map where ``map_repeats`` is False. All of it runs over
    the batch's chunks at once (row by row, numpy's per-call overhead dominates short rows).
    """
    k = len(aligned.rows)
    if not k:
        return []
    lp = chunk_logprobs(aligned, target_logprob)  # (N,)
    if topk_ids is None:
        rows = np.zeros(0, np.int64)
        ids, logprobs = np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)
        at = np.zeros(k + 1, np.int64)
    else:
        if vocab_map is None or topk_logprobs is None:
            raise ValueError("the exact targets need topk_ids, topk_logprobs and vocab_map together")
        rows, ids, logprobs, at = _exact(aligned, topk_ids, topk_logprobs, vocab_map, merge, same_token, lead)
    nbytes = aligned.student_spans[:, 1] - aligned.student_spans[:, 0]
    usable = aligned.usable.copy()  # the examples' own, not the alignments'
    s, c, a = aligned.student_off.tolist(), aligned.chunk_off.tolist(), at.tolist()
    return [AlignedExample(aligned.student_ids[s[r]:s[r + 1]], aligned.student_chunk[s[r]:s[r + 1]],
                           lp[c[r]:c[r + 1]], usable[c[r]:c[r + 1]], rows[a[r]:a[r + 1]], ids[a[r]:a[r + 1]],
                           logprobs[a[r]:a[r + 1]], nbytes[s[r]:s[r + 1]]) for r in range(k)]


def _exact(aligned: AlignedRows, topk_ids, topk_logprobs, vocab_map: np.ndarray,
           merge: bool, same_token: bool = False, lead: tuple | None = None) -> tuple[np.ndarray, ...]:
    """The exact rows of a batch: rows (P,) student positions, ids (P, k), logprobs (P, k), and
    at (K+1,): aligned row r's are [at[r], at[r+1])."""
    use = aligned.usable
    if same_token:  # a chunk of one token on each side: the two next tokens spell the same bytes
        one = lambda b: b[:, 1] - b[:, 0] == 1  # noqa: E731
        use = use & one(aligned.teacher_bounds) & one(aligned.student_bounds)
    c = np.flatnonzero(use)  # (P0,) batch chunks
    c_row = np.searchsorted(aligned.chunk_off, c, "right") - 1  # (P0,) their aligned row
    topk_ids, row_at = _flat_rows(topk_ids)
    t_rows = row_at[aligned.rows[c_row]] + aligned.teacher_bounds[c, 0] - 1  # (P0,) the store rows
    # np.take: a gather of whole rows, cheaper than fancy indexing on the (P0, k) arrays
    top = np.take(topk_ids, t_rows, axis=0)  # (P0, k) teacher ids
    led = None
    if lead is not None:
        first = aligned.student_off[c_row] + aligned.student_bounds[c, 0]  # (P0,) the token each row predicts
        led = lead_rows(aligned.student_ids[first], aligned.student_spans[first], lead[1])
    ids = map_top_k(top, vocab_map, None if lead is None else lead[0], led)  # (P0, k) student ids, -1 unmapped
    merge = merge or (led is not None and led.any())  # the lead map may send two teacher ids to one student id
    logprobs = np.take(_flat_rows(topk_logprobs, np.float32)[0], t_rows, axis=0)  # (P0, k) a copy
    unmapped = ids < 0
    if unmapped.any():
        logprobs[unmapped] = -np.inf
    if merge:  # a many-to-one map ("prefix") repeats ids
        ids, logprobs = merge_repeated_ids(ids, logprobs)
    if not (logprobs.size and np.isfinite(logprobs).all()):  # else every row keeps a mapped id
        keep = np.isfinite(logprobs).any(-1)  # a row with a mapped id (-inf wherever the id is -1)
        c, c_row, ids, logprobs = c[keep], c_row[keep], ids[keep], logprobs[keep]
    at = offsets(np.bincount(c_row, minlength=len(aligned.rows)))
    return aligned.student_bounds[c, 0] - 1, ids.astype(np.int64, copy=False), logprobs, at


def lead_rows(student_ids: np.ndarray, student_spans: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(P,) bool: each of these student tokens (ids (P,), byte spans (P, 2)) has a byte its span does
    not count: the lead its tokenizer puts at a piece's start (SentencePiece's "▁"; align.py)."""
    return lengths[student_ids] > student_spans[:, 1] - student_spans[:, 0]


def map_top_k(top: np.ndarray, vocab_map: np.ndarray, lead_map: np.ndarray | None = None,
              led: np.ndarray | None = None) -> np.ndarray:
    """(P, k) teacher ids → student ids (-1 unmapped), rows ``led`` through ``lead_map`` (the
    teacher's bytes after a space: the tokens a student writes where its piece starts)."""
    ids = np.take(vocab_map, top)
    if led is not None and led.any():
        ids[led] = np.take(lead_map, top[led])
    return ids


def map_repeats(vocab_map: np.ndarray) -> bool:
    """Whether two teacher ids map to one student id (the prefix map's merges; the identical map
    only when two teacher tokens have the same bytes). Only then can a row of the teacher's top-k,
    whose ids are distinct, list a student id twice."""
    mapped = vocab_map[vocab_map >= 0]
    return len(np.unique(mapped)) < len(mapped)


def merge_repeated_ids(ids: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, k) student ids (-1 unmapped) and (P, k) teacher log-probs → the same, each id listed
    once per row (at its first place) with the log of its summed probability, the places it
    left -1 / -inf. kd_loss reads its ids as distinct: a repeated id would count the student's
    probability twice in the tail (1 - Σ q)."""
    p, k = ids.shape
    if p == 0:
        return ids, logprobs
    # rows that list an id twice (the prefix map's merges; the identical map, nearly never): a sort
    # of the (P, k) ids finds them; the rest pass through untouched
    s = np.sort(ids, -1)
    again = ((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any(-1)  # (P,)
    if not again.any():
        return ids, logprobs
    if not again.all():
        ids, logprobs = ids.copy(), logprobs.copy()
        ids[again], logprobs[again] = _merge_rows(ids[again], logprobs[again])
        return ids, logprobs
    return _merge_rows(ids, logprobs)


def _merge_rows(ids: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """merge_repeated_ids over (P, k) rows that each repeat an id."""
    p, k = ids.shape
    ok = ids >= 0
    width = int(ids.max()) + 1
    key = (np.arange(p)[:, None] * width + ids)[ok]  # row-major order: first place first
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    summed = np.full(len(uniq), -np.inf)
    np.logaddexp.at(summed, inv, logprobs[ok].astype(np.float64))
    at = np.flatnonzero(ok.reshape(-1))[first]  # flat places of each id's first occurrence
    out_ids = np.full(p * k, -1, np.int64)
    out_lp = np.full(p * k, -np.inf, np.float32)
    out_ids[at], out_lp[at] = uniq % width, summed
    return out_ids.reshape(p, k), out_lp.reshape(p, k)


def empty_example() -> AlignedExample:
    """A one-token example with no chunks and no exact rows: a rank or micro-batch whose examples
    were all skipped still runs one forward pass (collectives stay in step), contributing 0."""
    none = np.zeros(0, np.int64)
    return AlignedExample(np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(0), np.zeros(0, bool), none,
                          np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), np.zeros(1, np.int64))


@dataclass
class AlignedBatch:
    """B examples, padded to L = the longest student sequence; N chunks, P exact rows in all.

    input_ids (B, L) int64 (pad_id past each example's end); attention_mask (B, L) bool.
    target_mask (B, L) bool: the tokens CE learns (AlignedExample.targets; the real ones by default).
    token_chunk (B, L) int64: batch-wide chunk index of each student token, -1 on padding.
    teacher_chunk_logprob (N,) float32; chunk_usable (N,) bool.
    exact_batch (P,), exact_row (P,) int64: where the exact rows sit in (B, L);
    exact_ids (P, k) int64 (-1 unmapped); exact_logprobs (P, k) float32 (-inf unmapped).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_mask: torch.Tensor
    token_chunk: torch.Tensor
    teacher_chunk_logprob: torch.Tensor
    chunk_usable: torch.Tensor
    exact_batch: torch.Tensor
    exact_row: torch.Tensor
    exact_ids: torch.Tensor
    exact_logprobs: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> AlignedBatch:
        return AlignedBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                               for f in fields(self)})


def collate_aligned(examples: list[AlignedExample], pad_id: int = 0) -> AlignedBatch:
    """Pad a list of AlignedExample into one AlignedBatch (a DataLoader ``collate_fn``)."""
    import torch

    if not examples:
        raise ValueError("collate_aligned needs at least one example")
    b, width = len(examples), max(len(e.student_ids) for e in examples)
    ids = np.full((b, width), pad_id, np.int64)
    mask = np.zeros((b, width), bool)
    targets = np.zeros((b, width), bool)
    chunk = np.full((b, width), -1, np.int64)
    offset = 0
    for i, e in enumerate(examples):
        n = len(e.student_ids)
        ids[i, :n], mask[i, :n], chunk[i, :n] = e.student_ids, True, e.student_chunk + offset
        targets[i, :n] = e.target_mask()
        offset += len(e.usable)
    ks = {e.exact_ids.shape[1] for e in examples if len(e.exact_rows)} or {0}
    if len(ks) > 1:
        raise ValueError(f"examples of one batch must share the store's top-k, got k in {sorted(ks)}")
    k = ks.pop()
    exact = [e for e in examples if len(e.exact_rows)]
    cat = (lambda xs, dtype, shape: np.concatenate(xs) if xs else np.zeros(shape, dtype))
    return AlignedBatch(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        target_mask=torch.from_numpy(targets),
        token_chunk=torch.from_numpy(chunk),
        teacher_chunk_logprob=torch.from_numpy(np.concatenate([e.teacher_chunk_logprob for e in examples])).float(),
        chunk_usable=torch.from_numpy(np.concatenate([e.usable for e in examples])),
        exact_batch=torch.from_numpy(cat([np.full(len(e.exact_rows), i, np.int64) for i, e in enumerate(examples)
                                          if len(e.exact_rows)], np.int64, (0,))),
        exact_row=torch.from_numpy(cat([e.exact_rows for e in exact], np.int64, (0,))),
        exact_ids=torch.from_numpy(cat([e.exact_ids for e in exact], np.int64, (0, k))),
        exact_logprobs=torch.from_numpy(cat([e.exact_logprobs for e in exact], np.float32, (0, k))),
    )
