"""Corpus loading, tokenization and packing into fixed-length examples."""
from kdstream.data.corpus import Corpus, load_corpus
from kdstream.data.examples import Examples, pack_examples
from kdstream.data.tokenizer import load_tokenizer, tokenizer_fingerprint

__all__ = ["Corpus", "Examples", "load_corpus", "load_tokenizer", "pack_examples", "tokenizer_fingerprint"]
