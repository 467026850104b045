"""How much of a window's zlib entropy is its tokenizer: the embedded corpus packed into windows of
a fixed number of tokens (as a study packs it) by BPE tokenizers trained on different text, and
per tokenizer the median zlib entropy, UTF-8 length and zlib bytes per text byte of the windows
that start in a license document against those that start in a docstring.

The study's classifier reads zlib entropy (compressed bytes of a window's text). A window of L
tokens spells as many bytes as its tokenizer packs into L tokens, so a tokenizer trained on text
full of license copies (the study's: trained on its own corpus) gives license windows more bytes,
and more compressed bytes, than one that never saw them. No model is trained here.

    python -m benchmarks.zlib_tokenizer_bench [--dataset demo+licenses:0.3] [--vocab 4096] [--seq-len 64]
        [--save-tokenizers DIR]   # DIR/NAME/: each tokenizer, for a study's `tokenizer:` field
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.results import save
from benchmarks.zlib_length_bench import window_medians
from kdstream.analysis.features import text_features
from kdstream.data import load_corpus
from kdstream.data.examples import pack_examples
from kdstream.text.tokenizers import train_bpe_tokenizer


def _groups(texts: list[str], is_license: list[bool], tokenizer, seq_len: int) -> dict:
    """Medians per group of windows (by the document each window starts in)."""
    import pandas as pd

    packed = pack_examples(texts, tokenizer, seq_len)
    frame = pd.DataFrame(text_features(tokenizer, packed.input_ids))  # zlib_entropy, text_bytes per window
    license_rows = np.asarray(is_license)[packed.doc_index]  # (S,) bool
    out = {"windows": len(packed), "license": window_medians(frame[license_rows]),
           "docstring": window_medians(frame[~license_rows])}
    out["license_minus_docstring_zlib"] = out["license"]["zlib_entropy"] - out["docstring"]["zlib_entropy"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="demo+licenses:0.3")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--save-tokenizers", help="save each tokenizer to DIR/NAME/ (DIR must not exist)")
    parser.add_argument("--name", default="zlib_tokenizer_bench")
    args = parser.parse_args()
    texts = load_corpus(args.dataset).texts
    docstrings = set(load_corpus("demo").texts)
    is_license = [t not in docstrings for t in texts]
    # what each tokenizer is trained on: the study's default (the corpus itself, license copies
    # included), the same corpus at a quarter of the vocabulary, and the docstrings alone (a
    # tokenizer that never saw a license, as a pretrained model's never saw the fine-tuning set)
    trained_on = {"corpus": (texts, args.vocab), "corpus_quarter_vocab": (texts, args.vocab // 4),
                  "docstrings_only": ([t for t, lic in zip(texts, is_license) if not lic], args.vocab)}
    figures: dict = {"dataset": args.dataset, "documents": len(texts), "license_documents": int(sum(is_license)),
                     "seq_len": args.seq_len, "tokenizers": {}}
    if args.save_tokenizers:
        if Path(args.save_tokenizers).exists():  # nothing is overwritten
            parser.error(f"--save-tokenizers {args.save_tokenizers} exists: pass a new directory")
        Path(args.save_tokenizers).mkdir(parents=True)
    for name, (train_texts, vocab) in trained_on.items():
        if args.save_tokenizers:
            tokenizer = train_bpe_tokenizer(train_texts, vocab, Path(args.save_tokenizers) / name)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                tokenizer = train_bpe_tokenizer(train_texts, vocab, tmp)
        figures["tokenizers"][name] = {"vocab": vocab, **_groups(texts, is_license, tokenizer, args.seq_len)}
    save(args.name, figures)


if __name__ == "__main__":
    main()
