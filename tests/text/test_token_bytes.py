"""Bytes per token (text/token_bytes.py) and bits per byte on hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kdstream.text.token_bytes import bits_per_byte, byte_vocab, token_byte_lengths

# "é" (2 bytes), "€" (3), "😀" (4): none is in the demo corpus, so the tokenizers split them into bytes
MULTI = "naïve café costs 5€ 😀"


def test_bits_per_byte_by_hand():
    assert bits_per_byte(10 * math.log(2), 5) == pytest.approx(2.0, rel=1e-12)
    assert np.isnan(bits_per_byte(3.0, 0))
    # two texts: 2 nats over 4 bytes and 4 nats over 2 bytes; one without bytes
    got = bits_per_byte(np.array([2.0, 4.0, 1.0]), np.array([4, 2, 0]))
    np.testing.assert_allclose(got[:2], [2.0 / (4 * math.log(2)), 4.0 / (2 * math.log(2))], rtol=1e-12)
    assert np.isnan(got[2])


def test_byte_level_bpe_counts_a_split_character_once(tokenizer):
    ids = tokenizer(MULTI, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # some token holds part of a character
    lengths = token_byte_lengths(tokenizer, ids)
    assert lengths.shape == (len(ids),) and lengths.dtype == np.int64
    assert int(lengths.sum()) == len(MULTI.encode("utf-8"))
    # decoding token by token would count each partial character as a 3-byte replacement character
    assert sum(len(p.encode()) for p in pieces) > len(MULTI.encode("utf-8"))


def test_sentencepiece_byte_fallback_counts_a_split_character_once(docs):
    from kdstream.text.tokenizers import train_sentencepiece_style_tokenizer

    tok = train_sentencepiece_style_tokenizer(docs[:60], 400)
    ids = tok(MULTI, add_special_tokens=False)["input_ids"]
    vocab = byte_vocab(tok)
    assert vocab.fallback[ids].sum() >= 9  # é, €, 😀 as <0xNN> tokens
    lengths = token_byte_lengths(vocab, [ids, ids])  # a ByteVocab works too, any shape
    assert lengths.shape == (2, len(ids))
    # one "▁" prepended to the text: the first token carries one byte the text does not have
    assert int(lengths[0].sum()) == len(MULTI.encode("utf-8")) + 1
    assert int(lengths[0, 1:].sum()) == len(MULTI.encode("utf-8")) + 1 - int(lengths[0, 0])


def test_special_tokens_count_their_content(tokenizer):
    eos = tokenizer.eos_token_id
    assert token_byte_lengths(tokenizer, [eos])[0] == len(tokenizer.eos_token.encode())
