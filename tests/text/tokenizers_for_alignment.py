"""Tokenizers of other kinds for the alignment tests, trained offline in a second on small text:
a SentencePiece-style (Llama-2 layout: "▁" for spaces, a "▁" prepended, <0xNN> byte fallback)
and a byte-level BPE with a lowercasing normaliser (its tokens do not give the text back)."""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


def sentencepiece_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    from kdstream.text.tokenizers import train_sentencepiece_style_tokenizer

    return train_sentencepiece_style_tokenizer(texts, vocab_size)


def lowercasing_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
