"""Align a teacher's and a student's tokenization of the same text on bytes: chunks between shared
byte boundaries, and the exact teacher → student vocabulary map.

Per example (the store's ``input_ids``, teacher tokens): each teacher token's byte string (the
tokenizer's ``ByteVocab``, data/token_bytes.py), their concatenation as UTF-8 text, the student's tokens
for that text (no special tokens added) and their byte spans. A byte offset where a teacher token
and a student token both end is a shared boundary; the text between two consecutive shared
boundaries is a chunk, covered by teacher tokens [ta, tb) and student tokens [sa, sb).

Special tokens (the teacher's ``<|endoftext|>`` between packed documents) are atomic spans: the
text between them is tokenized piece by piece, and each one becomes the student's matching special
token (same content, else the same role: eos, bos, pad, unk), whose span is the teacher token's.
An example cut inside a multi-byte character loses the partial character at its edges; the teacher
tokens holding those bytes are unusable. An example whose student tokenization does not give back
the same bytes (a normaliser, an unknown character) is skipped with a reason (``Skip``).

Everything here is numpy over per-tokenizer tables built once (``ByteVocab``): cheap enough to
run in DataLoader workers (benchmarks/align_bench.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdstream.data.token_bytes import ByteVocab, byte_vocab

__all__ = ["Aligner", "Alignment", "ByteVocab", "SKIP_REASONS", "Skip", "VOCAB_MAPS", "byte_vocab", "encode_texts",
           "exact_vocab_map"]

# How ``exact`` maps a teacher token to a student token (Aligner.vocab_map):
#   identical  the student token with the same bytes; none → its mass joins the tail
#   prefix     that, else the student token that is the longest byte prefix of it (the token the
#              student starts that text with, nearly always): all of the teacher's top-k is used
VOCAB_MAPS = ("identical", "prefix")

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


def _ranges(chunk: np.ndarray, num: int) -> np.ndarray:
    """(C, 2) [first, end) token index per chunk from a non-decreasing chunk index per token."""
    c = np.arange(num)
    return np.stack([np.searchsorted(chunk, c, "left"), np.searchsorted(chunk, c, "right")], -1)


class Aligner:
    """Both tokenizers' byte tables and the special-token map, built once; ``align`` per example.

    Picklable (DataLoader workers get a copy).
    """

    def __init__(self, teacher_tokenizer, student_tokenizer) -> None:
        self.student = student_tokenizer
        self.t = byte_vocab(teacher_tokenizer)
        self.s = byte_vocab(student_tokenizer)
        self.specials = _special_map(teacher_tokenizer, student_tokenizer, self.t, self.s)

    def vocab_map(self, rule: str = "identical") -> np.ndarray:
        """See ``exact_vocab_map``; ``rule`` one of VOCAB_MAPS."""
        if rule not in VOCAB_MAPS:
            raise ValueError(f"unknown vocabulary map {rule!r}; expected one of {VOCAB_MAPS}")
        by_bytes: dict[bytes, int] = {}
        ordinary = ~self.s.special & ~self.s.fallback & (self.s.lengths > 0)
        for keep in (ordinary, self.s.fallback):  # ordinary tokens first, then <0xNN>
            for i in np.flatnonzero(keep).tolist():
                by_bytes.setdefault(self.s.tokens[i], i)
        out = np.array([-1 if self.t.special[i] else by_bytes.get(b, -1) for i, b in enumerate(self.t.tokens)],
                       np.int64)
        if rule == "prefix":  # several teacher tokens may share a student token: rows merge them
            longest = max(map(len, by_bytes), default=0)
            for i in np.flatnonzero((out < 0) & ~self.t.special).tolist():
                b = self.t.tokens[i]
                out[i] = next((by_bytes[b[:n]] for n in range(min(len(b), longest), 0, -1) if b[:n] in by_bytes), -1)
        for i, j in self.specials.items():
            out[i] = j
        return out

    def _student_piece(self, data: bytes, ids: list[int]) -> np.ndarray | None:
        """Byte lengths of the student's tokens of one text piece, or None when they don't give it back.

        A SentencePiece tokenizer that prepends "▁" to the piece gives one byte too many at the
        front: taken off its first token.
        """
        lens = self.s.lengths[ids].copy()
        got = b"".join([self.s.tokens[i] for i in ids])
        if got == data:
            return lens
        if len(got) == len(data) + 1 and got[:1] == b" " and got[1:] == data and len(lens):
            lens[0] -= 1
            return lens
        return None

    def align(self, teacher_ids) -> Alignment | Skip:
        """Align one example's teacher tokens (L_t,) with the student's tokens of the same text."""
        return self.align_batch([teacher_ids])[0]

    def align_batch(self, rows) -> list[Alignment | Skip]:
        """``align`` for each row of teacher tokens, with one student tokenizer call for all of them.

        The tokenizer is most of an alignment's time; one batched call over every text piece of
        the batch (``encode_texts``) costs less than a call per example.
        """
        prepared = [self._prepare(row) for row in rows]
        texts = [t for p in prepared if isinstance(p, _Prepared) for t in p.texts]
        encoded = iter(encode_texts(self.student, texts))
        return [self._finish(p, [next(encoded) for _ in p.texts]) if isinstance(p, _Prepared) else p
                for p in prepared]

    def _prepare(self, teacher_ids) -> "_Prepared | Skip":
        """The example's text, its teacher spans and the pieces of it the student tokenizes."""
        ids = np.asarray(teacher_ids, np.int64).reshape(-1)
        t = self.t
        lens = t.lengths[ids]  # (L_t,)
        ends = np.cumsum(lens)
        starts = ends - lens
        raw = b"".join([t.tokens[i] for i in ids.tolist()])
        lo, hi = _utf8_window(raw)
        try:
            text = raw[lo:hi].decode("utf-8")
        except UnicodeDecodeError as exc:
            return Skip("invalid_utf8", str(exc))
        if hi <= lo:
            return Skip("empty", "no whole character in the example")
        # teacher spans in text coordinates; outside tokens get an empty span at the edge
        t_spans = np.stack([np.clip(starts, lo, hi), np.clip(ends, lo, hi)], -1) - lo  # (L_t, 2)
        inside = ((ends > lo) & (starts < hi)) | ((lens == 0) & (starts >= lo) & (starts < hi))
        cut = inside & ((starts < lo) | (ends > hi))  # lost bytes to trimming

        # the student's tokens, piece by piece between the teacher's special tokens
        sp = np.flatnonzero(t.special[ids] & inside)
        pieces: list[tuple[int, int]] = []  # text byte ranges to tokenize
        layout: list[tuple[str, int]] = []  # ("text", piece index) or ("special", teacher position)
        at = 0
        for j in sp.tolist():
            a, b = int(t_spans[j, 0]), int(t_spans[j, 1])
            if a > at:
                layout.append(("text", len(pieces)))
                pieces.append((at, a))
            student = self.specials.get(int(ids[j]), -1)
            if student >= 0:
                layout.append(("special", j))
            else:  # no student counterpart: its content as text
                layout.append(("text", len(pieces)))
                pieces.append((a, b))
            at = b
        if hi - lo > at:
            layout.append(("text", len(pieces)))
            pieces.append((at, hi - lo))
        data = raw[lo:hi]
        texts = [data[a:b].decode("utf-8") for a, b in pieces]
        return _Prepared(ids, text, data, t_spans, inside, cut, pieces, layout, texts)

    def _finish(self, p: "_Prepared", encoded: list[list[int]]) -> Alignment | Skip:
        """The alignment of a prepared example from the student's ids of each of its pieces."""
        ids, t_spans, inside = p.ids, p.t_spans, p.inside
        s_ids: list[np.ndarray] = []
        s_lens: list[np.ndarray] = []
        for kind, k in p.layout:
            if kind == "special":
                s_ids.append(np.array([self.specials[int(ids[k])]], np.int64))
                s_lens.append(np.array([t_spans[k, 1] - t_spans[k, 0]], np.int64))
                continue
            a, b = p.pieces[k]
            got = self._student_piece(p.data[a:b], encoded[k])
            if got is None:
                return Skip("no_round_trip", f"the student's tokens of bytes [{a}, {b}) do not give them back")
            s_ids.append(np.asarray(encoded[k], np.int64))
            s_lens.append(got)
        student_ids = np.concatenate(s_ids)
        s_ends = np.cumsum(np.concatenate(s_lens))
        s_spans = np.stack([s_ends - np.concatenate(s_lens), s_ends], -1)  # (L_s, 2)

        # shared boundaries and chunks: a byte offset is shared when a token of each side ends there
        n = len(p.data)
        t_end = np.zeros(n + 1, bool)
        t_end[0] = True
        t_end[t_spans[inside, 1]] = True
        shared = np.zeros(n + 1, bool)
        shared[0] = True
        shared[s_ends] = True
        shared &= t_end  # (n+1,)
        bounds = np.flatnonzero(shared)  # (C+1,) sorted: 0 … n
        num = len(bounds) - 1
        chunk_at = np.minimum(np.cumsum(shared) - 1, num - 1)  # (n+1,) chunk holding the byte at each offset
        t_chunk = np.where(inside, chunk_at[t_spans[:, 0]], -1)
        first = int(np.argmax(inside))
        monotone = np.where(inside, t_chunk, np.where(np.arange(len(ids)) < first, -1, num))
        s_chunk = chunk_at[s_spans[:, 0]]
        t_ranges, s_ranges = _ranges(monotone, num), _ranges(s_chunk, num)
        usable = (t_ranges[:, 0] >= 1) & (s_ranges[:, 0] >= 1)
        usable[t_chunk[p.cut]] = False
        return Alignment(p.text, student_ids, t_spans, s_spans, t_chunk, s_chunk, t_ranges, s_ranges, bounds, usable)


@dataclass(frozen=True)
class _Prepared:
    """An example between ``Aligner._prepare`` and ``_finish``: L_t teacher tokens, the text's
    bytes ``data``, and the byte ranges ``pieces`` (decoded: ``texts``) the student tokenizes."""

    ids: np.ndarray  # (L_t,) teacher ids
    text: str
    data: bytes
    t_spans: np.ndarray  # (L_t, 2) byte spans in the text
    inside: np.ndarray  # (L_t,) bool: the token has bytes in the text
    cut: np.ndarray  # (L_t,) bool: the token lost bytes to trimming
    pieces: list[tuple[int, int]]
    layout: list[tuple[str, int]]  # ("text", piece index) or ("special", teacher position)
    texts: list[str]


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """The tokenizer's ids of each text, no special tokens added: ``tokenizer(texts,
    add_special_tokens=False)["input_ids"]``, through the Rust tokenizer's ``encode_batch_fast``
    (ids only, no offsets: the spans come from the tokens' byte lengths) where there is one and
    it is set up as the call leaves it (no truncation, no padding, special tokens not split)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    plain = (backend is not None and hasattr(backend, "encode_batch_fast") and backend.truncation is None
             and backend.padding is None and getattr(backend, "encode_special_tokens", False) == split)
    if plain:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]
