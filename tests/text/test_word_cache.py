"""WordCache (text/word_cache.py) gives exactly the tokenizer's ids: on the corpus, on code points
up to U+30000 in a few contexts (Python's ``regex`` cuts words where the tokenizer's Oniguruma
does, wherever the cache takes a text), around special tokens, through a full cache, after
pickling; and it stands aside where it would not be exact (a normalizer)."""
from __future__ import annotations

import pickle

import pytest

from kdstream.text import word_cache
from kdstream.text.word_cache import WordCache, encode_texts, word_splitter

# Llama-3's split regex: a Split pre-tokenizer before ByteLevel(use_regex=False)
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _code_point_texts(stop: int = 0x30000) -> list[str]:
    """Code points below ``stop`` (all below U+3000, every 16th above; no surrogates) next to
    letters, digits, spaces and themselves, in other contexts than WordCache._agrees probes."""
    points = [*range(1, min(stop, 0x3000)), *range(0x3000, stop, 16)]
    return [f"{c}a {c}{c}{c}\t{c}9{c}, {c}'S\n\n{c} Z{c}z 7{c}" for c in map(chr, points)
            if not 0xD800 <= ord(c) < 0xE000]


def _splits_agree(cache: WordCache, texts: list[str]) -> bool:
    """Whether the tokenizer's pre-tokenizer and the cache's regex cut every text the cache takes
    (all its characters known to agree) into the same words."""
    pre = cache.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str  # ByteLevel-mapped words
    taken = [t for t in texts if t.isascii() or cache._known(t)]
    assert len(taken) > 0.9 * len(texts)  # all but the characters Oniguruma classes otherwise
    return all([w for w, _ in pre(t)] == [cache._mapped(w) for w in cache.split(t)] for t in taken)


def _split_tokenizer(docs):
    """A Llama-3-style byte-level BPE: Split(regex, isolated) then ByteLevel without its own regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|begin_of_text|>", "<|eot|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot|>")


@pytest.mark.parametrize("kind", ["byte_level", "split_then_byte_level"])
def test_word_cache_equals_the_tokenizer(kind, tokenizer, docs):
    tok = tokenizer if kind == "byte_level" else _split_tokenizer(docs)
    pattern, why_not = word_splitter(tok)
    assert pattern is not None, why_not
    cache = WordCache(tok)
    cache.encode([])
    # the regex cuts words where the tokenizer does, in every text the cache takes
    assert _splits_agree(cache, _code_point_texts())
    eos = tok.eos_token
    texts = [*docs, *_code_point_texts(0x800), "naïve café costs 5€ 😀 \u0558",
             f"before{eos}after", f"{eos}", f" x {eos}{eos} y", "", " ", "\n\n  \t", "it's IT'S 12345 x"]
    assert cache.encode(texts) == encode_texts(tok, texts)
    assert len(cache.words) > 0  # the cache served them
    # a text holding the special token's content goes to the tokenizer, which cuts it out
    special = tok.convert_tokens_to_ids(eos)
    assert special in cache.encode([f"before{eos}after"])[0]


def test_word_cache_through_a_full_cache_and_a_pickle(tokenizer, docs, monkeypatch):
    monkeypatch.setattr(word_cache, "MAX_WORDS", 50)  # cleared many times over the corpus
    cache = WordCache(tokenizer)
    want = encode_texts(tokenizer, docs)
    assert cache.encode(docs) == want
    assert 0 < len(cache.words) <= 50
    copy = pickle.loads(pickle.dumps(cache))  # as a DataLoader worker gets it: an empty cache
    assert not copy._ready
    assert copy.encode(docs) == want


def test_word_cache_stands_aside_where_it_would_not_be_exact(tokenizer, docs):
    from tokenizers import normalizers

    from kdstream.text.tokenizers import train_sentencepiece_style_tokenizer

    spm = train_sentencepiece_style_tokenizer(docs[:60], 400)
    lower = pickle.loads(pickle.dumps(tokenizer))
    lower.backend_tokenizer.normalizer = normalizers.Lowercase()
    for tok, why in ((spm, "a normalizer"), (lower, "a normalizer")):
        assert word_splitter(tok) == (None, why)
        cache = WordCache(tok)
        assert cache.encode(docs[:20]) == encode_texts(tok, docs[:20])
        assert cache.split is None and not cache.words
