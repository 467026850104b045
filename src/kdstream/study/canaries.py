"""Canaries (Carlini et al., "The Secret Sharer"): random-word sequences planted in the training
corpus `count` times each, so memorization can be read against a known duplication count.

Each canary is ``canary_tokens`` tokens of random whole-word tokens of the study's tokenizer,
chosen so that the canary's text tokenizes back to exactly those ids. Copies are inserted as
documents at seeded random places in the part of the corpus the study trains on (between
documents, or inside a long one, split at a window boundary), never straddling two training
windows (a straddled copy would never be seen whole). ``canaries.jsonl`` holds each
canary once: with ``--seq-len canary_tokens + 1`` every packed window is one canary + EOS, which
is how extract-eval scores them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdstream.errors import KdError

CANARY_FILE = "canaries.json"  # [{canary_id, count, text, token_ids, copies_in_training}]
CANARY_CORPUS = "canaries.jsonl"  # one document per canary, for extract-eval --dataset
STUDY_CORPUS = "corpus.jsonl"  # the corpus with the copies planted


def _word_pool(tokenizer) -> np.ndarray:
    """Ids of tokens that are one space + 2 or more ASCII letters and encode back to themselves."""
    ids = []
    for token, i in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if text.startswith(" ") and len(text) >= 3 and text[1:].isascii() and text[1:].isalpha():
            ids.append(i)
    ids.sort()
    encoded = tokenizer([tokenizer.decode([i]) for i in ids], add_special_tokens=False)["input_ids"]
    pool = np.asarray([i for i, e in zip(ids, encoded) if e == [i]], dtype=np.int64)
    if len(pool) < 16:  # 16 words: 4 bits a token, 64 bits for a 16-token canary
        raise KdError(f"the tokenizer has only {len(pool)} whole-word tokens: canaries need a word-level "
                      "vocabulary (set canary_counts: [] to run without canaries)")
    return pool


def make_canaries(tokenizer, counts: tuple[int, ...], per_count: int, length: int,
                  rng: np.random.Generator) -> list[dict]:
    """``per_count`` canaries for every duplication count -> [{canary_id, count, text, token_ids}]."""
    pool = _word_pool(tokenizer)
    out = []
    for count in counts:
        for _ in range(per_count):
            for _attempt in range(100):
                ids = rng.choice(pool, size=length, replace=True)
                text = tokenizer.decode(ids.tolist())
                if tokenizer(text, add_special_tokens=False)["input_ids"] == ids.tolist():
                    break
            else:
                raise KdError("could not draw a canary that tokenizes back to itself: use a byte-level BPE tokenizer")
            out.append({"canary_id": len(out), "count": int(count), "text": text, "token_ids": ids.tolist()})
    return out


def plant(texts: list[str], canaries: list[dict], tokenizer, examples: int, seq_len: int,
          rng: np.random.Generator) -> list[str]:
    """``texts`` with ``count`` copies of every canary inserted as documents inside the first
    ``examples * seq_len`` tokens of the packed stream, each copy whole inside one window.

    Copies go at document boundaries first (a corpus of short documents, such as the demo's, is
    then planted without splitting any). When that leaves copies over (long
    documents have too few boundaries), the same seeded places are used again, and a document that
    runs past a copy's place is split at the next window boundary, where the copy then starts.
    """
    extra = 1 if tokenizer.eos_token_id is not None else 0  # pack_examples appends EOS to documents
    copies = [c for c in canaries for _ in range(c["count"])]
    rng.shuffle(copies)
    need = examples * seq_len
    planted_tokens = sum(len(c["token_ids"]) + extra for c in copies)
    # Targets spread over the first 60% of the free room: the rest is slack for copies postponed
    # to a later document or window boundary because they would have straddled a window.
    room = int(0.6 * (need - planted_tokens))
    if room <= seq_len:
        raise KdError(f"{len(copies)} canary copies do not fit in {examples} examples of {seq_len} tokens: "
                      "raise examples or lower canary_counts / canaries_per_count")
    targets = np.sort(rng.integers(0, room, size=len(copies)))
    for split in (False, True):
        stream = _Stream(copies, targets, seq_len, need, extra)
        consumed = _place(texts, stream, tokenizer, split)
        if stream.done:
            return stream.out + texts[consumed:]
    raise KdError(f"only {stream.nxt} of {len(copies)} canary copies fit in the first {examples} examples: "
                  "use more examples or fewer canaries")


@dataclass
class _Stream:
    """The planted corpus as it grows: its documents, its length in packed tokens, the next copy."""

    copies: list[dict]
    targets: np.ndarray  # (copies,) sorted stream offsets at or after which each copy goes
    seq_len: int
    need: int  # tokens of the training windows
    extra: int  # 1 when pack_examples appends EOS to every document
    out: list[str] = field(default_factory=list)
    offset: int = 0
    nxt: int = 0

    @property
    def done(self) -> bool:
        return self.nxt == len(self.copies)

    def add(self, text: str, length: int) -> None:
        self.out.append(text)
        self.offset += length

    def fits(self, at: int) -> bool:
        """Whether the next copy, starting at stream offset ``at``, lies whole in one training window."""
        size = len(self.copies[self.nxt]["token_ids"]) + self.extra
        return at % self.seq_len + size <= self.seq_len and at + size <= self.need

    def insert_due(self) -> None:
        """Copies whose place is reached, while each fits whole in the current window."""
        while not self.done and self.targets[self.nxt] <= self.offset and self.fits(self.offset):
            self.add(self.copies[self.nxt]["text"], len(self.copies[self.nxt]["token_ids"]) + self.extra)
            self.nxt += 1


def _place(texts: list[str], stream: _Stream, tokenizer, split: bool) -> int:
    """Fill ``stream`` with the documents and the copies due between them (and, with ``split``,
    inside them); returns how many documents were used."""
    used = 0
    for doc_len, text in zip(_lengths(texts, tokenizer, stream.need), texts):
        stream.insert_due()
        if split:
            text, doc_len = _split_for_copies(text, doc_len, stream, tokenizer)
        stream.add(text, doc_len)
        used += 1
        if stream.offset >= stream.need and stream.done:
            break
    return used


def _split_for_copies(text: str, doc_len: int, stream: _Stream, tokenizer) -> tuple[str, int]:
    """Add the heads of ``text`` that end where due copies can start a window, each followed by
    those copies; returns the rest of the document and its packed length."""
    while not stream.done and stream.offset < stream.need:
        cut = _window_cut(text, stream, tokenizer)
        if cut is None:
            break
        head, head_len, text, doc_len = cut
        stream.add(head, head_len)
        stream.insert_due()
    return text, doc_len


def _at_space(text: str, cut: int) -> bool:
    return any(ch.isspace() for ch in text[max(cut - 1, 0) : cut + 1])


_CUT_TRIES = 32  # token positions tried after a window boundary before giving up on a document


def _window_cut(text: str, stream: _Stream, tokenizer) -> tuple[str, int, str, int] | None:
    """(head, its packed length, rest, its packed length): ``text`` cut at a token so that the head
    (+ EOS) ends at or just after the first window boundary at or after the next copy's place,
    where that copy then fits whole. Cuts after whitespace are preferred (no word is split); each
    piece is tokenized again, as pack_examples will, so the lengths are exact. None when no cut
    inside the document works (the copy then waits for the next document)."""
    if not tokenizer.is_fast:  # token offsets come from the fast (Rust) tokenizers only
        return None
    seq_len, offset = stream.seq_len, stream.offset
    boundary = -(-max(int(stream.targets[stream.nxt]), offset + 1) // seq_len) * seq_len
    first = boundary - offset - stream.extra  # head tokens for the head to end on the boundary
    if first < 1:
        first += seq_len
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    candidates = range(first, min(first + _CUT_TRIES, len(spans)))
    for i in sorted(candidates, key=lambda i: (not _at_space(text, spans[i][0]), i)):
        head, rest = text[: spans[i][0]], text[spans[i][0] :]
        if not head.strip() or not rest.strip():  # load_corpus drops blank documents
            continue
        head_len = len(tokenizer(head, add_special_tokens=False)["input_ids"]) + stream.extra
        at = offset + head_len
        if at >= stream.targets[stream.nxt] and stream.fits(at):
            return head, head_len, rest, len(tokenizer(rest, add_special_tokens=False)["input_ids"]) + stream.extra
    return None


def _lengths(texts: list[str], tokenizer, need: int):
    """Packed length (tokens + EOS) of each document, tokenizing only as far as needed."""
    extra = 1 if tokenizer.eos_token_id is not None else 0
    total = 0
    for b in range(0, len(texts), 256):
        for ids in tokenizer(texts[b : b + 256], add_special_tokens=False)["input_ids"]:
            yield len(ids) + extra
            total += len(ids) + extra
        if total > 2 * need:
            return


def copies_in_windows(input_ids: np.ndarray, token_ids: list[int]) -> int:
    """How many times the token sequence occurs whole inside a row of ``input_ids`` (S, L)."""
    n = len(token_ids)
    if n > input_ids.shape[1]:
        return 0
    windows = np.lib.stride_tricks.sliding_window_view(input_ids, n, axis=1)  # (S, L-n+1, n)
    return int((windows == np.asarray(token_ids)).all(axis=-1).sum())


def build_study_corpus(seed_dir: Path, corpus_texts: list[str], tokenizer, cfg, seed: int) -> dict:
    """Write ``corpus.jsonl`` (canaries planted), ``canaries.jsonl`` and ``canaries.json`` into
    ``seed_dir``; every copy's presence is checked on the packed examples -> the canary list."""
    from kdstream.data import pack_examples

    rng = np.random.default_rng([seed, 0xCA7A])
    canaries = make_canaries(tokenizer, cfg.canary_counts, cfg.canaries_per_count, cfg.canary_tokens, rng)
    texts = plant(corpus_texts, canaries, tokenizer, cfg.examples, cfg.seq_len, rng)
    packed = pack_examples(texts, tokenizer, cfg.seq_len, cfg.examples).input_ids
    for c in canaries:
        c["copies_in_training"] = copies_in_windows(packed, c["token_ids"])
        if c["copies_in_training"] < c["count"]:
            raise KdError(f"canary {c['canary_id']} has {c['copies_in_training']} of {c['count']} copies in the "
                          "training windows: use more examples or fewer canaries")
    _write_jsonl(seed_dir / STUDY_CORPUS, texts)
    _write_jsonl(seed_dir / CANARY_CORPUS, [c["text"] for c in canaries])
    tmp = seed_dir / (CANARY_FILE + ".partial")
    tmp.write_text(json.dumps(canaries, indent=1))
    tmp.replace(seed_dir / CANARY_FILE)  # written last: its presence means the corpus is done
    return {"canaries": len(canaries), "copies": sum(c["count"] for c in canaries), "documents": len(texts)}


def _write_jsonl(path: Path, texts: list[str]) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    tmp.replace(path)


def canary_rates(canary_file: Path, results: Path) -> dict[int, dict]:
    """{count: {"canaries", "extracted", "rate"}} from canaries.json and an extract-eval of
    canaries.jsonl (example i = canary i)."""
    import pyarrow.parquet as pq

    canaries = json.loads(Path(canary_file).read_text())
    table = pq.read_table(results, columns=["example_id", "exact_match"]).to_pydict()
    exact = dict(zip(table["example_id"], table["exact_match"]))
    if set(exact) != set(range(len(canaries))):
        raise KdError(f"{results} does not cover the {len(canaries)} canaries of {canary_file}: rerun that evaluation")
    out: dict[int, dict] = {}
    for c in canaries:
        row = out.setdefault(c["count"], {"canaries": 0, "extracted": 0})
        row["canaries"] += 1
        row["extracted"] += int(bool(exact[c["canary_id"]]))
    for row in out.values():
        row["rate"] = row["extracted"] / row["canaries"]
    return dict(sorted(out.items()))
