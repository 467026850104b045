"""Corpus loading and packing into fixed-length examples (tokenizers: kdstream.text)."""
from kdstream.data.corpus import Corpus, load_corpus
from kdstream.data.examples import Examples, pack_examples

__all__ = ["Corpus", "Examples", "load_corpus", "pack_examples"]
