"""The embedded default corpus with duplicated, low-entropy text added, for issue 19's question of
whether such text makes zlib entropy a negative predictor of memorization: `demo+licenses:0.3`
plus the standard library's charmap codec tables (`encodings/cp1252.py` and the like: tables of
`'\\x07'  #  0x07 -> BELL` lines, many the same from one code page to the next), whole files drawn
in a fixed shuffled order up to a share of the characters, mixed in as `demo+licenses` mixes.

Written as JSONL (field `text`) for a study's `dataset:`, with the corpus fingerprint `kdstream`
will record; deterministic for a given Python and environment.

    python -m benchmarks.codec_corpus OUT.jsonl [--share 0.1]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

LICENSE_SHARE = 0.3  # the embedded default's (demo+licenses:0.3)


def codec_tables() -> list[str]:
    """The source of every standard-library codec module that holds a decoding table, sorted by name."""
    import encodings

    files = sorted(Path(encodings.__file__).parent.glob("*.py"))
    return [text for text in (f.read_text(encoding="utf-8") for f in files) if "decoding_table" in text]


def main() -> None:
    from kdstream.data.corpus import fingerprint_texts
    from kdstream.data.demo_corpus import demo_documents
    from kdstream.data.license_corpus import license_documents, license_share, mixed_documents

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSONL file to write (field `text`)")
    parser.add_argument("--share", type=float, default=0.1, help="codec tables' share of the characters (0 < S < 1)")
    args = parser.parse_args()
    demo = demo_documents()
    base = demo + license_share(demo, license_documents(), LICENSE_SHARE)  # demo+licenses:0.3, before its shuffle
    codecs = license_share(base, codec_tables(), args.share)  # whole files, fixed shuffle, up to the share
    docs = mixed_documents(base, codecs)  # one fixed shuffle of all three
    with open(args.out, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    print(json.dumps({"out": args.out, "documents": len(docs), "codec_files": len(codecs),
                      "codec_share": round(sum(map(len, codecs)) / sum(map(len, docs)), 4),
                      "fingerprint": fingerprint_texts(docs)}))


if __name__ == "__main__":
    main()
