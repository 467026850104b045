"""A second corpus of long documents for issue 19's check that the calibrated defaults hold beyond
the embedded corpus: the long descriptions (README text) in the METADATA of the installed packages.

Long documents (2k–140k characters each), with the natural duplication of real READMEs (install
lines, badges, license paragraphs, shared templates) and nothing in common with the embedded
corpus's docstrings and license files. Written as JSONL (field `text`) for `--dataset`, with the
corpus fingerprint `kdstream` will record for it; deterministic for a given environment
(distributions in sorted order).

    python -m benchmarks.readme_corpus OUT.jsonl
"""
from __future__ import annotations

import argparse
import email
import json
import sysconfig
from pathlib import Path

MIN_CHARS = 2000  # shorter descriptions are one-paragraph blurbs, not long documents


def readme_documents() -> list[str]:
    """The long description of every installed distribution that has one of ≥ MIN_CHARS."""
    site = Path(sysconfig.get_paths()["purelib"])
    docs = []
    for info in sorted(site.glob("*.dist-info")):
        meta = info / "METADATA"
        if not meta.is_file():
            continue
        body = email.message_from_bytes(meta.read_bytes()).get_payload()
        if isinstance(body, str) and len(body.strip()) >= MIN_CHARS:
            docs.append(body.strip())
    return docs


def main() -> None:
    from kdstream.data.corpus import fingerprint_texts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSONL file to write (field `text`)")
    args = parser.parse_args()
    docs = readme_documents()
    with open(args.out, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    print(json.dumps({"out": args.out, "documents": len(docs), "chars": sum(map(len, docs)),
                      "fingerprint": fingerprint_texts(docs)}))


if __name__ == "__main__":
    main()
