"""Align a teacher's and a student's tokenization of the same text on bytes: chunks between shared
byte boundaries, and the exact teacher → student vocabulary map.

Per example (the store's ``input_ids``, teacher tokens): each teacher token's byte string (the
tokenizer's ``ByteVocab``, text/token_bytes.py), their concatenation as UTF-8 text, the student's tokens
for that text (no special tokens added) and their byte spans. A byte offset where a teacher token
and a student token both end is a shared boundary; the text between two consecutive shared
boundaries is a chunk, covered by teacher tokens [ta, tb) and student tokens [sa, sb).

Special tokens (the teacher's ``<|endoftext|>`` between packed documents) are atomic spans: the
text between them is tokenized piece by piece, and each one becomes the student's matching special
token (same content, else the same role: eos, bos, pad, unk), whose span is the teacher token's.
An example cut inside a multi-byte character loses the partial character at its edges; the teacher
tokens holding those bytes are unusable. An example whose student tokenization does not give back
the same bytes (a normaliser, an unknown character) is skipped with a reason (``Skip``).

Everything here is numpy over per-tokenizer tables built once (``ByteVocab``), over a whole
batch at once (``Aligner.align_rows``: the rows' tokens concatenated, with per-row offsets; on
short rows numpy's per-call cost, not the data, is what a row-by-row loop pays): cheap enough to
run in DataLoader workers (benchmarks/align_bench.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import chain

import numpy as np

from kdstream.text.token_bytes import ByteVocab, byte_vocab
from kdstream.text.word_cache import WordCache, encode_texts

__all__ = ["AlignedRows", "Aligner", "Alignment", "ByteVocab", "EXACT_ROWS", "SKIP_REASONS", "Skip", "VOCAB_MAPS",
           "byte_vocab", "encode_texts", "exact_vocab_map"]

# How ``exact`` maps a teacher token to a student token (Aligner.vocab_map):
#   identical  the student token with the same bytes; none → its mass joins the tail
#   prefix     that, else the student token that is the longest byte prefix of it (the token the
#              student starts that text with, nearly always): all of the teacher's top-k is used
VOCAB_MAPS = ("identical", "prefix")
# Which student positions get an exact row (aligned_batch._exact):
#   aligned     every usable chunk start: both next tokens start at the same byte
#   same_token  only where both next tokens are the same bytes (a chunk of one token on each side);
#               the student's other positions take CE in the exact term (cross_tokenizer.cross_terms)
EXACT_ROWS = ("aligned", "same_token")

_SPECIAL_ROLES = ("eos_token_id", "bos_token_id", "pad_token_id", "unk_token_id")


def _special_map(teacher_tok, student_tok, t: ByteVocab, s: ByteVocab) -> dict[int, int]:
    """Teacher special id → the student's special id of the same content, else of the same role, else -1."""
    by_content = {s.tokens[i]: i for i in np.flatnonzero(s.special)[::-1].tolist()}
    out = {}
    for i in np.flatnonzero(t.special).tolist():
        j = by_content.get(t.tokens[i], -1)
        for role in _SPECIAL_ROLES:
            if j < 0 and getattr(teacher_tok, role, None) == i and getattr(student_tok, role, None) is not None:
                j = int(getattr(student_tok, role))
        out[i] = j
    return out


def exact_vocab_map(teacher_tok, student_tok, rule: str = "identical") -> np.ndarray:
    """(V_t,) int64: for each teacher id, the student id whose byte string is identical, -1 if none
    (``rule="prefix"``: else the student's longest token that is a byte prefix of it).

    Special tokens map to special tokens only (``_special_map``). Among student tokens with the
    same bytes an ordinary token wins over a ``<0xNN>`` byte-fallback one (the one the student
    would produce), then the lowest id. Empty byte strings map to nothing.
    """
    return Aligner(teacher_tok, student_tok).vocab_map(rule)


@dataclass(frozen=True)
class Skip:
    """An example that cannot be aligned; ``reason`` is one of SKIP_REASONS (count them by it)."""

    reason: str
    detail: str = ""


SKIP_REASONS = ("invalid_utf8", "no_round_trip", "empty")


@dataclass(frozen=True)
class Alignment:
    """One example's alignment. C chunks; byte offsets are into ``text.encode()``.

    student_ids (L_s,) int64: the student's tokens of the text (its model input).
    teacher_spans (L_t, 2), student_spans (L_s, 2) int64: byte [start, end) of each token, the
    teacher's clipped to the text (a token wholly outside it: an empty span at the edge).
    teacher_chunk (L_t,) int64: chunk of each teacher token, -1 outside the text (trimmed edges).
    student_chunk (L_s,) int64: chunk of each student token.
    teacher_bounds (C, 2), student_bounds (C, 2) int64: token ranges [ta, tb), [sa, sb) per chunk.
    byte_bounds (C+1,) int64: the shared boundaries.
    usable (C,) bool: every token of the chunk has a log-prob on both sides (not token 0 of
    either sequence) and no teacher token in it lost bytes to trimming.
    """

    text: str
    student_ids: np.ndarray
    teacher_spans: np.ndarray
    student_spans: np.ndarray
    teacher_chunk: np.ndarray
    student_chunk: np.ndarray
    teacher_bounds: np.ndarray
    student_bounds: np.ndarray
    byte_bounds: np.ndarray
    usable: np.ndarray

    @property
    def num_chunks(self) -> int:
        return int(self.usable.shape[0])


def _utf8_window(raw: bytes) -> tuple[int, int]:
    """[lo, hi): ``raw`` without a multi-byte character cut at either edge."""
    lo = 0
    while lo < min(len(raw), 3) and raw[lo] & 0xC0 == 0x80:  # continuation bytes of a cut char
        lo += 1
    hi = len(raw)
    for back in range(1, min(4, len(raw) - lo) + 1):  # the last lead byte: is its character whole?
        b = raw[hi - back]
        if b & 0xC0 == 0x80:
            continue
        need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
        if need > back:
            hi -= back
        break
    return lo, hi


class Aligner:
    """Both tokenizers' byte tables and the special-token map, built once; ``align`` per example.

    Picklable (DataLoader workers get a copy).
    """

    def __init__(self, teacher_tokenizer, student_tokenizer) -> None:
        self.student = student_tokenizer
        self.t = byte_vocab(teacher_tokenizer)
        self.s = byte_vocab(student_tokenizer)
        self.specials = _special_map(teacher_tokenizer, student_tokenizer, self.t, self.s)
        self.encoder = WordCache(student_tokenizer)  # the student's ids, a word at a time where exact

    def vocab_map(self, rule: str = "identical", lead: bytes = b"") -> np.ndarray:
        """See ``exact_vocab_map``; ``rule`` one of VOCAB_MAPS. ``lead``: map each teacher token's
        bytes after these (b" ": the student's token where its piece starts with a "▁")."""
        if rule not in VOCAB_MAPS:
            raise ValueError(f"unknown vocabulary map {rule!r}; expected one of {VOCAB_MAPS}")
        by_bytes: dict[bytes, int] = {}
        ordinary = ~self.s.special & ~self.s.fallback & (self.s.lengths > 0)
        for keep in (ordinary, self.s.fallback):  # ordinary tokens first, then <0xNN>
            for i in np.flatnonzero(keep).tolist():
                by_bytes.setdefault(self.s.tokens[i], i)
        out = np.array([-1 if self.t.special[i] else by_bytes.get(lead + b, -1) for i, b in enumerate(self.t.tokens)],
                       np.int64)
        if rule == "prefix":  # several teacher tokens may share a student token: rows merge them
            longest = max(map(len, by_bytes), default=0)
            for i in np.flatnonzero((out < 0) & ~self.t.special).tolist():
                b = lead + self.t.tokens[i]
                out[i] = next((by_bytes[b[:n]] for n in range(min(len(b), longest), 0, -1) if b[:n] in by_bytes), -1)
        for i, j in self.specials.items():
            out[i] = j
        return out

    def align(self, teacher_ids) -> Alignment | Skip:
        """Align one example's teacher tokens (L_t,) with the student's tokens of the same text."""
        return self.align_batch([teacher_ids])[0]

    def align_batch(self, rows) -> list[Alignment | Skip]:
        """``align`` for each row of teacher tokens: ``align_rows``, sliced per example."""
        return self.align_rows(rows).alignments()

    def align_rows(self, rows) -> AlignedRows:
        """Every row of teacher tokens aligned at once: the student's ids of all the batch's text
        pieces in one call (``WordCache.encode``, else ``encode_texts``) and numpy over the rows'
        tokens concatenated, so a row costs a few Python operations (on short rows numpy's
        per-call overhead, not the data, is what a row-by-row loop pays)."""
        p = self._prepare(rows)
        return self._finish(p, self.encoder.encode(p.piece_texts))

    def piece_texts(self, rows) -> list[str]:
        """The text pieces (between special tokens) of ``rows`` that ``align_rows`` hands the
        student's tokenizer in its one call: what a benchmark of that call encodes."""
        return self._prepare(rows).piece_texts

    def _prepare(self, rows) -> _Prepared:
        """Each row's text (its whole characters), the teacher spans in it and the pieces of it the
        student tokenizes. B rows in, K of them with a text, T teacher tokens in those K."""
        ids, num = _concat_rows(rows)  # (all tokens,), (B,) per row
        lens = self.t.lengths[ids]
        ends = np.cumsum(lens)  # byte ends in raw: the rows' bytes one after the other
        raw = self.t.bytes_of(ids, ends).tobytes()
        row_bytes = np.concatenate([[0], ends])[offsets(num)].tolist()  # row b: raw[row_bytes[b]:row_bytes[b + 1]]
        results: list[Skip | int] = []  # per row: a Skip, or its index k among the K rows with a text
        texts, windows = [], []  # (K,) the text and its [lo, hi) in raw
        for r0, r1 in zip(row_bytes[:-1], row_bytes[1:]):
            lo, hi = _utf8_window(raw[r0:r1])
            try:
                text = raw[r0 + lo:r0 + hi].decode("utf-8")
            except UnicodeDecodeError as exc:
                results.append(Skip("invalid_utf8", str(exc)))
                continue
            if hi <= lo:
                results.append(Skip("empty", "no whole character in the example"))
                continue
            results.append(len(texts))
            texts.append(text)
            windows.append((r0 + lo, r0 + hi))
        if len(texts) < len(num):  # the tokens of rows with a text
            has_text = np.array([not isinstance(r, Skip) for r in results], bool)  # (B,)
            keep = np.repeat(has_text, num)
            ids, lens, ends, num = ids[keep], lens[keep], ends[keep], num[has_text]
        t_off = offsets(num)  # (K+1,) row k's tokens: [t_off[k], t_off[k + 1])
        win = np.array(windows, np.int64).reshape(-1, 2)  # (K, 2)
        t_row = np.repeat(np.arange(len(texts)), np.diff(t_off))  # (T,)
        lo, hi, starts = win[t_row, 0], win[t_row, 1], ends - lens
        # (T, 2) teacher spans in text coordinates; outside tokens get an empty span at the edge
        t_spans = _pairs(np.minimum(np.maximum(starts, lo), hi) - lo, np.minimum(np.maximum(ends, lo), hi) - lo)
        inside = ((ends > lo) & (starts < hi)) | ((lens == 0) & (starts >= lo) & (starts < hi))
        cut = inside & ((starts < lo) | (ends > hi))  # lost bytes to trimming
        data = b"".join([raw[a:b] for a, b in windows])  # the K texts' bytes one after the other
        p = _Prepared(ids, results, texts, data, offsets(win[:, 1] - win[:, 0]), t_off, t_row, t_spans, inside, cut)
        self._pieces(p)
        return p

    def _pieces(self, p: _Prepared) -> None:
        """Fill ``p``'s pieces and items: the text the student tokenizes and where its tokens go.

        A row without a special token in its text is one piece, the whole text. A row with some is
        tokenized piece by piece between them, each special becoming the student's matching special
        token (``self.specials``); one without a counterpart is a piece of its own (its content).
        """
        sp = np.flatnonzero(self.t.special[p.ids] & p.inside)  # teacher positions of specials in the texts
        sp_at = np.searchsorted(sp, p.t_off).tolist()  # (K+1,) row k's: sp[sp_at[k]:sp_at[k + 1]]
        text_off = p.text_off.tolist()
        for k, text in enumerate(p.texts):
            if sp_at[k] == sp_at[k + 1]:  # the common case: no special token in the row
                p.items.append((k, len(p.pieces), -1, -1))
                p.pieces.append((k, text_off[k], text_off[k + 1]))
                p.piece_texts.append(text)
                continue
            at, base = 0, text_off[k]
            for j in sp[sp_at[k]:sp_at[k + 1]].tolist():
                a, b = p.t_spans[j].tolist()
                if a > at:
                    p.add_piece(k, base + at, base + a)
                student = self.specials.get(int(p.ids[j]), -1)
                if student >= 0:
                    p.items.append((k, -1, student, j))
                else:  # no student counterpart: its content as text
                    p.add_piece(k, base + a, base + b)
                at = b
            if text_off[k + 1] > base + at:
                p.add_piece(k, base + at, text_off[k + 1])

    def _student_tokens(self, p: _Prepared, encoded: list[list[int]]) -> tuple[np.ndarray, ...]:
        """The student's tokens of the K rows, S in all in row order, from the ids of each piece:
        ids (S,), byte lengths (S,), row (S,), and bad (P,): the pieces whose tokens do not give
        their bytes back. A SentencePiece tokenizer that prepends "▁" to a piece gives one byte
        too many at the front: taken off its first token."""
        n_ids = np.fromiter(map(len, encoded), np.int64, len(encoded))  # (P,)
        flat = np.fromiter(chain.from_iterable(encoded), np.int64, int(n_ids.sum()))
        lens = self.s.lengths[flat]
        extra, bad = self._round_trip(p, flat, lens, n_ids)
        items = np.array(p.items, np.int64).reshape(-1, 4)  # (I, 4) row, piece or -1, special id, position
        is_piece = items[:, 1] >= 0  # items list the pieces in order
        size = np.ones(len(items), np.int64)
        size[is_piece] = n_ids
        at = offsets(size)  # (I+1,) item i's student tokens: [at[i], at[i+1])
        ids, s_lens = np.empty(at[-1], np.int64), np.empty(at[-1], np.int64)
        at = at[:-1]
        piece_at = at[is_piece]  # (P,)
        where = np.arange(len(flat)) + np.repeat(piece_at - offsets(n_ids)[:-1], n_ids)
        ids[where], s_lens[where] = flat, lens
        s_lens[piece_at[(extra == 1) & (n_ids > 0)]] -= 1
        special = ~is_piece
        j = items[special, 3]
        ids[at[special]] = items[special, 2]
        s_lens[at[special]] = p.t_spans[j, 1] - p.t_spans[j, 0]
        return ids, s_lens, np.repeat(items[:, 0], size), bad

    def _round_trip(self, p: _Prepared, flat: np.ndarray, lens: np.ndarray, n_ids: np.ndarray):
        """Each piece's extra leading byte (the student's "▁": 0 or 1) and whether its student tokens
        (flat (S_p,) of byte lengths lens, n_ids (P,) per piece) fail to spell its bytes (P,).

        The batch's tokens spell all its pieces (each after its extra space) as one comparison;
        only a batch where some piece fails compares piece by piece.
        """
        ends = offsets(lens)
        got_at = ends[offsets(n_ids)]  # (P+1,) piece i's tokens' bytes: got[got_at[i]:got_at[i+1]]
        extra = np.diff(got_at) - np.array([b - a for _, a, b in p.pieces], np.int64)
        bad = (extra != 0) & (extra != 1)
        got = self.s.bytes_of(flat, ends[1:]).tobytes()
        want = [b" " + p.data[a:b] if e == 1 else p.data[a:b] for (_, a, b), e in zip(p.pieces, extra.tolist())]
        if got != b"".join(want):
            at = got_at.tolist()
            bad |= np.array([got[at[i]:at[i + 1]] != w for i, w in enumerate(want)], bool)
        return extra, bad

    def _finish(self, p: _Prepared, encoded: list[list[int]]) -> AlignedRows:
        """The alignments of the prepared rows from the student's ids of each piece."""
        s_ids, s_lens, s_row, bad = self._student_tokens(p, encoded)
        results = p.results
        if bad.any():
            p, results, s_ids, s_lens, s_row = _drop_failed(p, bad, s_ids, s_lens, s_row)
        return _chunks(p, results, s_ids, s_lens, s_row)


def _drop_failed(p: _Prepared, bad: np.ndarray, s_ids: np.ndarray, s_lens: np.ndarray, s_row: np.ndarray):
    """Rows with a piece that does not round-trip (bad (P,)) become Skips, named by their first failing
    piece; the other rows' arrays, renumbered. Returns (p, results, s_ids, s_lens, s_row) of those."""
    failed: dict[int, Skip] = {}
    text_off = p.text_off.tolist()
    for i in np.flatnonzero(bad).tolist():
        k, a, b = p.pieces[i]
        a, b = a - text_off[k], b - text_off[k]
        failed.setdefault(k, Skip("no_round_trip", f"the student's tokens of bytes [{a}, {b}) do not give them back"))
    good = np.ones(len(p.texts), bool)
    good[list(failed)] = False
    new = np.cumsum(good) - 1  # (K,) prepared row → aligned row
    results = [r if isinstance(r, Skip) else failed[r] if r in failed else int(new[r]) for r in p.results]
    t_keep, s_keep = good[p.t_row], good[s_row]
    kept = replace(p, ids=p.ids[t_keep], texts=[t for t, g in zip(p.texts, good) if g],
                   text_off=offsets(np.diff(p.text_off)[good]), t_off=offsets(np.diff(p.t_off)[good]),
                   t_row=new[p.t_row[t_keep]], t_spans=p.t_spans[t_keep], inside=p.inside[t_keep], cut=p.cut[t_keep],
                   data=b"", pieces=[], piece_texts=[], items=[])  # (the pieces are spent)
    return kept, results, s_ids[s_keep], s_lens[s_keep], new[s_row[s_keep]]


@dataclass(frozen=True)
class AlignedRows:
    """A batch's alignments (``Aligner.align_rows``): the arrays of the K aligned rows one after the
    other, N chunks in all. Row k has teacher tokens [teacher_off[k], teacher_off[k+1]), student
    tokens [student_off[k], …), chunks [chunk_off[k], …); spans, token ranges and chunk indices
    are the row's own, as in its ``Alignment`` (``alignments``)."""

    results: list  # (B,) per input row: its Skip, or k, its index among the aligned rows
    rows: np.ndarray  # (K,) int64 the input row of each aligned row
    texts: list[str]  # (K,)
    text_off: np.ndarray  # (K+1,) row k's text: bytes [text_off[k], text_off[k+1]) of the texts one after the other
    byte_bounds: np.ndarray  # (N+1,) the shared boundaries in those coordinates: row k's are [chunk_off[k], …+1]
    chunk_off: np.ndarray  # (K+1,)
    teacher_off: np.ndarray  # (K+1,)
    teacher_spans: np.ndarray  # (T, 2)
    teacher_chunk: np.ndarray  # (T,)
    teacher_bounds: np.ndarray  # (N, 2)
    student_off: np.ndarray  # (K+1,)
    student_ids: np.ndarray  # (S,)
    student_spans: np.ndarray  # (S, 2)
    student_chunk: np.ndarray  # (S,)
    student_bounds: np.ndarray  # (N, 2)
    usable: np.ndarray  # (N,)

    @classmethod
    def of(cls, a: Alignment) -> AlignedRows:
        """One alignment as a batch of one row."""
        one = (lambda n: np.array([0, n], np.int64))
        return cls([0], np.zeros(1, np.int64), [a.text], one(a.byte_bounds[-1]), a.byte_bounds, one(a.num_chunks),
                   one(len(a.teacher_chunk)), a.teacher_spans, a.teacher_chunk, a.teacher_bounds,
                   one(len(a.student_ids)), a.student_ids, a.student_spans, a.student_chunk, a.student_bounds, a.usable)

    def alignments(self) -> list[Alignment | Skip]:
        """Each input row's Alignment (slices of the batch's arrays), or its Skip."""
        t, s, c, x = (o.tolist() for o in (self.teacher_off, self.student_off, self.chunk_off, self.text_off))
        return [r if isinstance(r, Skip) else Alignment(
            self.texts[r], self.student_ids[s[r]:s[r + 1]], self.teacher_spans[t[r]:t[r + 1]],
            self.student_spans[s[r]:s[r + 1]], self.teacher_chunk[t[r]:t[r + 1]], self.student_chunk[s[r]:s[r + 1]],
            self.teacher_bounds[c[r]:c[r + 1]], self.student_bounds[c[r]:c[r + 1]],
            self.byte_bounds[c[r]:c[r + 1] + 1] - x[r], self.usable[c[r]:c[r + 1]]) for r in self.results]


def _concat_rows(rows) -> tuple[np.ndarray, np.ndarray]:
    """Rows of teacher ids ((B, L) or a list of B) → (their ids one after the other, (B,) ids per row)."""
    if isinstance(rows, np.ndarray) and rows.ndim == 2:  # the loader's batch: one reshape
        return rows.astype(np.int64, copy=False).reshape(-1), np.full(len(rows), rows.shape[1], np.int64)
    ids_of = [np.asarray(r, np.int64).reshape(-1) for r in rows]
    num = np.fromiter(map(len, ids_of), np.int64, len(ids_of))
    return (np.concatenate(ids_of) if ids_of else np.zeros(0, np.int64)), num


def offsets(counts: np.ndarray) -> np.ndarray:
    """(n+1,) int64 running sum from 0: item i of the concatenation is [out[i], out[i+1])."""
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _pairs(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(n, 2) int64 of two (n,) columns (np.stack, without its per-call cost)."""
    out = np.empty((len(first), 2), np.int64)
    out[:, 0], out[:, 1] = first, second
    return out


def _before(count: np.ndarray, chunk_off: np.ndarray, chunk_row: np.ndarray) -> np.ndarray:
    """(N,) how many tokens a chunk's row has in its earlier chunks, from count (N,) tokens per chunk."""
    acc = offsets(count)
    return acc[:-1] - acc[chunk_off[:-1]][chunk_row]


def _chunks(p: _Prepared, results: list, s_ids: np.ndarray, s_lens: np.ndarray, s_row: np.ndarray) -> AlignedRows:
    """The shared boundaries, chunks and token ranges of p's K rows, over their texts one after the
    other (p.text_off): the teacher's spans p.t_spans (T, 2) in each row's text; the student's
    tokens s_ids, s_lens, s_row (S,) in row order (each row's spell its text, so the running sum
    of their lengths is in batch coordinates). A byte offset is shared when a token of each side
    ends there."""
    k, text_off, t_off, t_row, t_spans, inside = len(p.texts), p.text_off, p.t_off, p.t_row, p.t_spans, p.inside
    s_off = offsets(np.bincount(s_row, minlength=k))  # (K+1,)
    rows = np.array([b for b, r in enumerate(results) if not isinstance(r, Skip)], np.int64)
    t_at = text_off[t_row]
    s_ends = np.cumsum(s_lens)
    s_starts = s_ends - s_lens
    t_end = np.zeros(text_off[-1] + 1, bool)  # every row starts (and ends) at a shared boundary
    t_end[text_off] = True
    t_end[(t_at + t_spans[:, 1])[inside]] = True
    shared = np.zeros_like(t_end)
    shared[text_off] = True
    shared[s_ends] = True
    shared &= t_end
    count = np.cumsum(shared)  # (n+1,) count - 1: the chunk holding the byte at each offset
    c_off = count[text_off] - 1  # (K+1,) row k's chunks: [c_off[k], c_off[k+1])
    last = c_off[1:] - 1  # (K,) each row's last chunk (its end offset belongs to the next row)
    t_g = np.minimum(count[t_at + t_spans[:, 0]] - 1, last[t_row])  # (T,) batch chunk of each token
    s_g = np.minimum(count[s_starts] - 1, last[s_row])  # (S,)
    c_row = np.repeat(np.arange(k), np.diff(c_off))  # (N,)
    # token ranges per chunk: each row's chunk of its tokens is non-decreasing (the teacher's
    # tokens outside the text sit before or after it), so a chunk's first token is the count of
    # the row's tokens before it: the teacher's outside ones first, then those of earlier chunks
    t_count = np.bincount(t_g[inside], minlength=c_off[-1])
    s_count = np.bincount(s_g, minlength=c_off[-1])
    first = np.flatnonzero(inside)
    first = first[np.searchsorted(t_row[first], np.arange(k))] - t_off[:-1]  # (K,) each row's first token inside
    t_first = _before(t_count, c_off, c_row) + first[c_row]
    s_first = _before(s_count, c_off, c_row)
    usable = (t_first >= 1) & (s_first >= 1)  # token 0 of either sequence has no log-prob
    usable[t_g[p.cut]] = False
    s_at = text_off[s_row]
    return AlignedRows(results, rows, p.texts, text_off, np.flatnonzero(shared), c_off, t_off, t_spans,
                       np.where(inside, t_g - c_off[t_row], -1), _pairs(t_first, t_first + t_count), s_off, s_ids,
                       _pairs(s_starts - s_at, s_ends - s_at), s_g - c_off[s_row], _pairs(s_first, s_first + s_count),
                       usable)


@dataclass
class _Prepared:
    """A batch between ``Aligner._prepare`` and ``_finish``: K rows with a text, their T teacher
    tokens and the P pieces of text the student tokenizes, I items of student tokens."""

    ids: np.ndarray  # (T,) teacher ids
    results: list  # (B,) per input row: a Skip, or k
    texts: list[str]  # (K,)
    data: bytes  # the K texts' bytes one after the other
    text_off: np.ndarray  # (K+1,) row k's text: data[text_off[k]:text_off[k+1]]
    t_off: np.ndarray  # (K+1,) row k's teacher tokens: [t_off[k], t_off[k+1])
    t_row: np.ndarray  # (T,) row of each teacher token
    t_spans: np.ndarray  # (T, 2) byte spans in the row's text
    inside: np.ndarray  # (T,) bool: the token has bytes in the text
    cut: np.ndarray  # (T,) bool: the token lost bytes to trimming
    pieces: list[tuple[int, int, int]] = field(default_factory=list)  # (row, a, b): data[a:b] is tokenized
    piece_texts: list[str] = field(default_factory=list)
    # (row, piece, -1, -1): the piece's tokens; (row, -1, student id, teacher position): a special token
    items: list[tuple[int, int, int, int]] = field(default_factory=list)

    def add_piece(self, k: int, a: int, b: int) -> None:
        self.items.append((k, len(self.pieces), -1, -1))
        self.pieces.append((k, a, b))
        self.piece_texts.append(self.data[a:b].decode("utf-8"))
