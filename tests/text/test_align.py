"""kdstream.text.align on real tokenizers: byte spans, shared boundaries, chunks, the vocabulary map."""
from __future__ import annotations

import numpy as np
import pytest
from tokenizers_for_alignment import lowercasing_tokenizer, sentencepiece_tokenizer

from kdstream.text.align import SKIP_REASONS, Aligner, Alignment, Skip, byte_vocab, exact_vocab_map
from kdstream.text.tokenizers import train_bpe_tokenizer

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
    rows = [ids_of(small, t) for t in (SAMPLE, "the fox", "Hello world! hello again", "中文 café")]
    rows[2] = rows[2][1:]  # examples of different lengths, one cut at a token
    for student in (large, spm, lowercasing_tokenizer(TEXTS, 300)):
        aligner = Aligner(small, student)
        one = [aligner.align(r) for r in rows]
        batch = aligner.align_batch(rows)
        assert len(batch) == len(rows)
        for x, y in zip(one, batch):
            assert_same_alignment(x, y)
    assert any(isinstance(a, Skip) for a in Aligner(small, lowercasing_tokenizer(TEXTS, 300)).align_batch(rows))


def test_encode_texts_gives_the_tokenizer_calls_ids(small, spm):
    """The fast path (the Rust tokenizer's ids) is the tokenizer's own call, and a tokenizer set
    to truncate is called as a tokenizer (its own call turns truncation off)."""
    from kdstream.text.align import encode_texts

    texts = [SAMPLE, "the fox", "", "Hello world!" * 40]
    for tok in (small, spm):
        want = tok(texts, add_special_tokens=False)["input_ids"]
        assert encode_texts(tok, texts) == want
        tok.backend_tokenizer.enable_truncation(max_length=4)
        try:
            assert encode_texts(tok, texts) == want
        finally:
            tok.backend_tokenizer.no_truncation()


def assert_same_alignment(x, y) -> None:
    """Two align results are the same Skip, or Alignments equal field by field (dtypes too)."""
    from dataclasses import fields

    assert type(x) is type(y)
    if isinstance(x, Skip):
        assert x == y
        return
    for f in fields(Alignment):
        a, b = getattr(x, f.name), getattr(y, f.name)
        assert a == b if isinstance(a, str) else (a.dtype == b.dtype and np.array_equal(a, b)), f.name


# ---- the batched path against a straightforward per-example reference ----------------------------------------

def reference_align(aligner: Aligner, teacher_ids) -> Alignment | Skip:
    """One example aligned token by token in plain numpy (the per-example code the batched path replaced)."""
    from kdstream.text.align import _utf8_window, encode_texts

    ids = np.asarray(teacher_ids, np.int64).reshape(-1)
    t, s = aligner.t, aligner.s
    lens = t.lengths[ids]
    ends = np.cumsum(lens)
    starts = ends - lens
    raw = b"".join(t.tokens[i] for i in ids.tolist())
    lo, hi = _utf8_window(raw)
    try:
        text = raw[lo:hi].decode("utf-8")
    except UnicodeDecodeError as exc:
        return Skip("invalid_utf8", str(exc))
    if hi <= lo:
        return Skip("empty", "no whole character in the example")
    t_spans = np.stack([np.clip(starts, lo, hi), np.clip(ends, lo, hi)], -1) - lo
    inside = ((ends > lo) & (starts < hi)) | ((lens == 0) & (starts >= lo) & (starts < hi))
    cut = inside & ((starts < lo) | (ends > hi))
    data = raw[lo:hi]
    s_ids, s_lens, at = [], [], 0

    def piece(a: int, b: int) -> str | None:
        got_ids = encode_texts(aligner.student, [data[a:b].decode()])[0]
        got = b"".join(s.tokens[i] for i in got_ids)
        plens = [int(s.lengths[i]) for i in got_ids]
        if got == data[a:b]:
            pass
        elif got_ids and got == b" " + data[a:b]:
            plens[0] -= 1
        else:
            return f"the student's tokens of bytes [{a}, {b}) do not give them back"
        s_ids.extend(got_ids)
        s_lens.extend(plens)
        return None

    for j in np.flatnonzero(t.special[ids] & inside).tolist():
        a, b = int(t_spans[j, 0]), int(t_spans[j, 1])
        failed = piece(at, a) if a > at else None
        student = aligner.specials.get(int(ids[j]), -1)
        if student >= 0:
            s_ids.append(student)
            s_lens.append(b - a)
        else:
            failed = failed or piece(a, b)
        if failed:
            return Skip("no_round_trip", failed)
        at = b
    failed = piece(at, len(data)) if len(data) > at else None
    if failed:
        return Skip("no_round_trip", failed)
    s_ends = np.cumsum(s_lens, dtype=np.int64)
    s_spans = np.stack([s_ends - np.asarray(s_lens, np.int64), s_ends], -1)
    t_end = {0, *t_spans[inside, 1].tolist()}
    bounds = np.array(sorted(t_end & {0, *s_ends.tolist()}), np.int64)
    num = len(bounds) - 1
    chunk_of = (lambda x: min(int(np.searchsorted(bounds, x, "right")) - 1, num - 1))
    t_chunk = np.array([chunk_of(a) if ok else -1 for (a, _), ok in zip(t_spans.tolist(), inside)], np.int64)
    s_chunk = np.array([chunk_of(a) for a, _ in s_spans.tolist()], np.int64)
    first, last = int(np.argmax(inside)), len(ids) - int(np.argmax(inside[::-1]))
    t_ranges = np.array([[first + int(np.sum(t_chunk[first:last] < c)), first + int(np.sum(t_chunk[first:last] <= c))]
                         for c in range(num)], np.int64).reshape(-1, 2)
    s_ranges = np.array([[int(np.sum(s_chunk < c)), int(np.sum(s_chunk <= c))] for c in range(num)],
                        np.int64).reshape(-1, 2)
    usable = (t_ranges[:, 0] >= 1) & (s_ranges[:, 0] >= 1)
    usable[t_chunk[cut]] = False
    return Alignment(text, np.asarray(s_ids, np.int64), t_spans, s_spans, t_chunk, s_chunk, t_ranges, s_ranges,
                     bounds, usable)


def reference_targets(a: Alignment, target_logprob, topk_ids, topk_logprobs, vocab_map, merge: bool):
    """One example's targets, computed chunk by chunk: (chunk log-probs, exact rows, ids, log-probs)."""
    from kdstream.distill.aligned_batch import merge_repeated_ids

    lp = np.zeros(a.num_chunks)
    for j in range(1, len(a.teacher_chunk)):
        if a.teacher_chunk[j] >= 0:
            lp[a.teacher_chunk[j]] += np.float64(target_logprob[j - 1])
    lp = np.where(a.usable, lp, 0.0)
    c = np.flatnonzero(a.usable)
    ids = vocab_map[np.asarray(topk_ids)[a.teacher_bounds[c, 0] - 1]]
    logprobs = np.where(ids >= 0, np.asarray(topk_logprobs, np.float32)[a.teacher_bounds[c, 0] - 1],
                        -np.inf).astype(np.float32)
    if merge:
        ids, logprobs = merge_repeated_ids(ids, logprobs)
    keep = ((ids >= 0) & np.isfinite(logprobs)).any(-1)
    return lp, a.student_bounds[c[keep], 0] - 1, ids[keep], logprobs[keep]


def varied_rows(teacher) -> list[np.ndarray]:
    """Rows with special tokens (between texts, at an edge, twice), multi-byte characters cut at either
    edge, a row of a cut character only (no whole character), one with bytes missing inside a character
    (invalid UTF-8), capitals (the lowercasing student does not give them back), one token, none, and
    rows starting or ending inside "ï" (small's "na\\xc3", large's "\\xafve": a token holding part of it and
    more, kept, its chunk unusable)."""
    ids = ids_of(teacher, SAMPLE)
    eos = teacher.eos_token_id
    cjk = ids_of(teacher, "日本 the fox naïve 日本")
    fox, hello = ids_of(teacher, "the fox"), ids_of(teacher, "Hello")
    return [ids, ids[1:-1], ids[3:], np.concatenate([[eos], fox, [eos, eos]]), cjk[1:-1], cjk[2:-2], cjk[:1],
            cjk[1:2], np.concatenate([cjk[:1], cjk[2:]]), ids_of(teacher, "hello world"),
            ids_of(teacher, "Hello World"), np.concatenate([hello, [eos], fox]), np.concatenate([fox, [eos], hello]),
            ids[:1], np.zeros(0, np.int64), ids_of(teacher, "中文 café 😀")[1:],
            *(ids_of(teacher, "naïve 日本")[j:] for j in range(1, 5)), ids_of(teacher, "café naïve")[:5]]


def test_align_rows_equals_a_per_example_reference(small, large, spm):
    """align_rows (the loader's path) gives every row exactly the per-example reference's Alignment or
    Skip, and its targets (aligned_examples) exactly the per-example targets."""
    from dataclasses import fields

    from kdstream.distill.aligned_batch import aligned_example, aligned_examples, map_repeats

    rng = np.random.default_rng(0)
    reasons, cut = set(), 0
    lower = lowercasing_tokenizer(TEXTS, 300)
    for teacher, student in ((small, large), (small, spm), (small, lower), (small, small), (large, small)):
        aligner = Aligner(teacher, student)
        rows = varied_rows(teacher)
        want = [reference_align(aligner, r) for r in rows]
        got = aligner.align_rows(rows)
        reasons |= {w.reason for w in want if isinstance(w, Skip)}
        for w, g, r in zip(want, got.alignments(), rows):
            assert_same_alignment(w, g)
            if isinstance(w, Skip):
                continue
            cut += int(np.any((w.teacher_chunk >= 0) & (np.diff(w.teacher_spans, axis=1)[:, 0]
                                                         < aligner.t.lengths[np.asarray(r)])))
        for rule in ("identical", "prefix"):
            vmap = aligner.vocab_map(rule)
            target = [rng.normal(-3, 1, max(len(r) - 1, 0)).astype(np.float32) for r in rows]
            topk = [np.argsort(rng.random((max(len(r) - 1, 0), len(vmap))), -1)[:, :4] for r in rows]  # distinct ids
            topk_lp = [rng.normal(-5, 2, (max(len(r) - 1, 0), 4)).astype(np.float32) for r in rows]
            topk_lp[0][:3] = [[np.nan, np.inf, -np.inf, 1.0], [np.nan] * 4, [-np.inf] * 4]  # rows kept or not
            merge = map_repeats(vmap)
            examples = aligned_examples(got, target, topk, topk_lp, vmap, merge)
            assert len(examples) == len(got.rows)
            for e, b in zip(examples, got.rows.tolist()):
                lp, exact_rows, ids, logprobs = reference_targets(want[b], target[b], topk[b], topk_lp[b], vmap, merge)
                np.testing.assert_array_equal(e.teacher_chunk_logprob, lp)
                np.testing.assert_array_equal(e.exact_rows, exact_rows)
                np.testing.assert_array_equal(e.exact_ids, ids)
                np.testing.assert_array_equal(e.exact_logprobs, logprobs)
                np.testing.assert_array_equal(e.student_bytes, np.diff(want[b].student_spans, axis=1)[:, 0])
                one = aligned_example(want[b], target[b], topk[b], topk_lp[b], vmap, merge)  # a batch of one
                for f in fields(e):
                    np.testing.assert_array_equal(getattr(one, f.name), getattr(e, f.name), f.name, strict=True)
    assert reasons == set(SKIP_REASONS) and cut  # every skip, and a kept token that lost bytes
