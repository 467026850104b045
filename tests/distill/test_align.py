"""kdstream.distill.align on real tokenizers: byte spans, shared boundaries, chunks, the vocabulary map."""
from __future__ import annotations

import numpy as np
import pytest
from tokenizers_for_alignment import lowercasing_tokenizer, sentencepiece_tokenizer

from kdstream.data.tokenizer import train_bpe_tokenizer
from kdstream.distill.align import Aligner, Alignment, Skip, byte_vocab, exact_vocab_map

TEXTS = ["the quick brown fox jumps over the lazy dog, then the fox sleeps."] * 10 + [
    "中文中文 中文中文 café naïve crème brûlée"] * 10 + ["Hello world! hello again, world."] * 10
SAMPLE = "Hello 中文 world, café naïve 😀 the fox<|endoftext|> crème brûlée\nnew line  two spaces"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return train_bpe_tokenizer(TEXTS, 300, tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    return train_bpe_tokenizer(TEXTS, 420, tmp_path_factory.mktemp("large"))


@pytest.fixture(scope="module")
def spm():
    return sentencepiece_tokenizer(TEXTS, 320)


def ids_of(tok, text: str) -> np.ndarray:
    return np.asarray(tok(text, add_special_tokens=False)["input_ids"], np.int64)


def check_consistent(a: Alignment, teacher, student, teacher_ids) -> None:
    """Every chunk's teacher tokens and student tokens spell the text between its two boundaries."""
    tv, sv = byte_vocab(teacher), byte_vocab(student)
    data = a.text.encode()
    assert a.byte_bounds[0] == 0 and a.byte_bounds[-1] == len(data) and np.all(np.diff(a.byte_bounds) > 0)
    s_specials = set(np.flatnonzero(sv.special).tolist())
    for c in range(a.num_chunks):
        (ta, tb), (sa, sb) = a.teacher_bounds[c], a.student_bounds[c]
        assert ta < tb and sa < sb
        piece = data[a.byte_bounds[c]:a.byte_bounds[c + 1]]
        whole = np.all(np.diff(a.teacher_spans[ta:tb], axis=1)[:, 0] == tv.lengths[teacher_ids[ta:tb]])
        if whole:  # (a token that lost bytes to trimming spells more than the text)
            assert b"".join(tv.tokens[i] for i in teacher_ids[ta:tb]) == piece
        if not s_specials & set(a.student_ids[sa:sb].tolist()):  # a student special spells the teacher's
            assert b"".join(sv.tokens[i] for i in a.student_ids[sa:sb]).lstrip(b" ") == piece.lstrip(b" ")
        assert np.all(a.teacher_chunk[ta:tb] == c) and np.all(a.student_chunk[sa:sb] == c)
    # spans tile the text
    assert a.student_spans[0, 0] == 0 and a.student_spans[-1, 1] == len(data)
    assert np.all(a.student_spans[1:, 0] == a.student_spans[:-1, 1])


def test_same_tokenizer_one_chunk_per_token(tokenizer, docs):
    text = "<|endoftext|>".join(docs[:3])
    ids = ids_of(tokenizer, text)
    a = Aligner(tokenizer, tokenizer).align(ids)
    assert isinstance(a, Alignment) and a.text == text
    np.testing.assert_array_equal(a.student_ids, ids)
    n = len(ids)
    assert a.num_chunks == n
    np.testing.assert_array_equal(a.teacher_bounds, np.stack([np.arange(n), np.arange(1, n + 1)], -1))
    np.testing.assert_array_equal(a.student_bounds, a.teacher_bounds)
    np.testing.assert_array_equal(a.usable, np.arange(n) >= 1)  # token 0 has no log-prob
    for rule in ("identical", "prefix"):
        np.testing.assert_array_equal(exact_vocab_map(tokenizer, tokenizer, rule), np.arange(len(tokenizer.get_vocab())))


def test_merges_that_split_differently(small, large):
    ids = ids_of(small, SAMPLE)
    a = Aligner(small, large).align(ids)
    assert isinstance(a, Alignment) and a.text == SAMPLE
    assert len(a.student_ids) < len(ids)  # the larger vocabulary merges more
    assert a.num_chunks < len(ids) and np.any(np.diff(a.teacher_bounds, axis=1) > 1)
    check_consistent(a, small, large, ids)
    # the special token is its own chunk on both sides, mapped to the student's <|endoftext|>
    eos = int(np.flatnonzero(ids == small.eos_token_id)[0])
    c = a.teacher_chunk[eos]
    assert a.teacher_bounds[c].tolist() == [eos, eos + 1]
    sa, sb = a.student_bounds[c]
    assert sb - sa == 1 and a.student_ids[sa] == large.eos_token_id


def test_byte_level_teacher_sentencepiece_student(small, spm):
    """Multi-byte characters split into byte tokens on both sides ("Ġ"-style bytes vs <0xNN>),
    leading-space markers ("Ġ" vs "▁"), the "▁" SentencePiece prepends, </s> for <|endoftext|>."""
    ids = ids_of(small, SAMPLE)
    a = Aligner(small, spm).align(ids)
    assert isinstance(a, Alignment) and a.text == SAMPLE
    check_consistent(a, small, spm, ids)
    pieces = spm.convert_ids_to_tokens(a.student_ids.tolist())
    assert any(p.startswith("<0x") for p in pieces) and any(p.startswith("▁") for p in pieces)
    assert spm.eos_token_id in a.student_ids.tolist()
    assert a.student_spans[0, 0] == 0  # the prepended "▁" takes no byte of the text
    # 😀 (4 bytes, unseen in training) is a byte token each on both sides: a chunk per byte
    start = SAMPLE.encode().index("😀".encode())
    for k in range(4):
        c = int(np.searchsorted(a.byte_bounds, start + k, "right") - 1)
        assert a.byte_bounds[c] == start + k and a.byte_bounds[c + 1] == start + k + 1


def test_leading_space_markers(small, spm):
    for text in (" leading space", "  two leading", "no leading"):
        ids = ids_of(small, text)
        a = Aligner(small, spm).align(ids)
        assert isinstance(a, Alignment) and a.text == text
        check_consistent(a, small, spm, ids)
        assert a.student_spans[-1, 1] == len(text.encode())


def test_example_cut_inside_a_character(small, large):
    text = "日本 the fox naïve 日本"  # 日 and 本: 3 bytes each, unseen in training: a token per byte
    ids = ids_of(small, text)
    vocab = byte_vocab(small)
    assert [len(vocab.tokens[i]) for i in ids[:6]] == [1] * 6
    # cut after the first byte of 日 and before the last byte of the final 本
    a = Aligner(small, large).align(ids[1:-1])
    assert isinstance(a, Alignment)
    assert a.text == "本 the fox naïve 日"
    assert a.teacher_chunk[:2].tolist() == [-1, -1] and a.teacher_chunk[-2:].tolist() == [-1, -1]  # trimmed
    check_consistent(a, small, large, ids[1:-1])  # the trimmed tokens are outside every chunk
    # a token holding the tail of a cut character and more (large has "\xafve": the end of ï, then "ve")
    vocab = byte_vocab(large)
    ids = ids_of(large, "naïve 日本")
    j = next(j for j, t in enumerate(ids.tolist()) if vocab.tokens[t] == b"\xafve")
    a = Aligner(large, small).align(ids[j:])
    assert isinstance(a, Alignment) and a.text == "ve 日本"
    assert a.teacher_chunk[0] == 0 and not a.usable[0]  # kept for its whole bytes, but its chunk is unusable
    check_consistent(a, large, small, ids[j:])


def test_example_that_does_not_round_trip_is_skipped(small):
    lower = lowercasing_tokenizer(TEXTS, 300)
    aligner = Aligner(small, lower)
    got = aligner.align(ids_of(small, "Hello World"))
    assert isinstance(got, Skip) and got.reason == "no_round_trip"
    assert isinstance(aligner.align(ids_of(small, "hello world")), Alignment)  # nothing to lowercase: aligns
    results = [aligner.align(ids_of(small, t)) for t in ("Hello", "hello", "the fox", "The Fox")]
    assert sum(isinstance(r, Skip) for r in results) == 2  # callers count them by reason


def test_vocab_map_is_byte_identical(small, spm, large):
    tv = byte_vocab(small)
    for student in (large, spm):
        sv = byte_vocab(student)
        m = exact_vocab_map(small, student)
        assert m.shape == (len(tv.tokens),)
        for t, s in enumerate(m.tolist()):
            if s >= 0 and not tv.special[t]:
                assert tv.tokens[t] == sv.tokens[s]
        # every single-byte teacher token has a student counterpart (byte alphabet / byte fallback)
        singles = [t for t, b in enumerate(tv.tokens) if len(b) == 1]
        assert all(m[t] >= 0 for t in singles)
        assert m[small.eos_token_id] == student.eos_token_id
    m = exact_vocab_map(small, spm)
    pieces = [(small.convert_ids_to_tokens(t), spm.convert_ids_to_tokens(int(s))) for t, s in enumerate(m) if s >= 0]
    assert any(p.startswith("Ġ") and q == "▁" + p[1:] and len(p) > 1 for p, q in pieces)  # leading-space markers
    assert spm.convert_ids_to_tokens(int(m[ids_of(small, "a")[0]])) == "a"  # ordinary token over <0x61>


def test_prefix_map_gives_every_teacher_token_the_student_token_that_begins_it(small, spm):
    """--exact-map prefix: identical where a student token has the same bytes, else the student's
    longest token that is a byte prefix of the teacher token; every ordinary teacher token is mapped."""
    tv, sv = byte_vocab(small), byte_vocab(spm)
    identical, prefix = exact_vocab_map(small, spm), exact_vocab_map(small, spm, "prefix")
    np.testing.assert_array_equal(prefix[identical >= 0], identical[identical >= 0])
    ordinary = ~tv.special & (tv.lengths > 0)
    assert np.all(prefix[ordinary] >= 0) and (identical[ordinary] < 0).any()  # the map adds something
    student_bytes = {sv.tokens[j] for j in range(len(sv.tokens)) if not sv.special[j]}
    for t in np.flatnonzero(ordinary & (identical < 0)).tolist():
        b, got = tv.tokens[t], sv.tokens[int(prefix[t])]
        assert b.startswith(got) and len(got) < len(b)
        assert not any(b[:n] in student_bytes for n in range(len(got) + 1, len(b)))  # the longest one
    with pytest.raises(ValueError, match="unknown vocabulary map"):
        exact_vocab_map(small, spm, "nearest")


def test_align_batch_equals_align_example_by_example(small, large, spm):
    """One batched tokenizer call gives each example exactly its own alignment, skips in place."""
    from dataclasses import fields

    rows = [ids_of(small, t) for t in (SAMPLE, "the fox", "Hello world! hello again", "中文 café")]
    rows[2] = rows[2][1:]  # examples of different lengths, one cut at a token
    for student in (large, spm, lowercasing_tokenizer(TEXTS, 300)):
        aligner = Aligner(small, student)
        one = [aligner.align(r) for r in rows]
        batch = aligner.align_batch(rows)
        assert len(batch) == len(rows)
        for x, y in zip(one, batch):
            assert type(x) is type(y)
            if isinstance(x, Skip):
                assert x == y
                continue
            for f in fields(Alignment):
                a, b = getattr(x, f.name), getattr(y, f.name)
                assert a == b if isinstance(a, str) else np.array_equal(a, b), f.name
    assert any(isinstance(a, Skip) for a in Aligner(small, lowercasing_tokenizer(TEXTS, 300)).align_batch(rows))


def test_encode_texts_gives_the_tokenizer_calls_ids(small, spm):
    """The fast path (the Rust tokenizer's ids) is the tokenizer's own call, and a tokenizer set
    to truncate is called as a tokenizer (its own call turns truncation off)."""
    from kdstream.distill.align import encode_texts

    texts = [SAMPLE, "the fox", "", "Hello world!" * 40]
    for tok in (small, spm):
        want = tok(texts, add_special_tokens=False)["input_ids"]
        assert encode_texts(tok, texts) == want
        tok.backend_tokenizer.enable_truncation(max_length=4)
        try:
            assert encode_texts(tok, texts) == want
        finally:
            tok.backend_tokenizer.no_truncation()
