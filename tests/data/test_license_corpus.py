"""The embedded `licenses` corpus: the installed packages' license texts, duplicates kept."""
from __future__ import annotations

from collections import Counter

from kdstream.data.corpus import load_corpus
from kdstream.data.demo_corpus import demo_documents
from kdstream.data.license_corpus import license_documents, license_files, requirement_closure

MIT = "Permission is hereby granted, free of charge, to any person obtaining a copy " * 4


def _dist(site, name: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = site / f"{name}.dist-info" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_license_files_are_read_in_sorted_order_duplicates_kept_junk_skipped(tmp_path):
    site = tmp_path / "site-packages"
    _dist(site, "zeta-1.0", {"LICENSE": MIT.encode()})
    _dist(site, "alpha-2.0", {
        "licenses/LICENSE.txt": ("Apache License 2.0 " * 20).encode(),
        "NOTICE": b"short notice",  # too short: a pointer, not a text
        "METADATA": ("Name: alpha " * 40).encode(),  # not a license file
        "COPYING": b"\xff\xfe" + ("GPL " * 100).encode("utf-16-le"),  # not UTF-8: skipped, never decoded as junk
    })
    _dist(site, "beta-1.0", {"LICENSE.md": (MIT + "\r\n").encode(), "licenses/NUL": b"x\x00" * 200})
    docs = license_documents([site])
    # alpha, beta, zeta; beta's CRLF copy of the MIT text is the same text: an exact duplicate, kept
    assert docs == [("Apache License 2.0 " * 20).strip(), MIT.strip(), MIT.strip()]
    assert license_documents([site]) == docs


def test_only_kdstreams_dependency_closure_counts(tmp_path):
    names = requirement_closure()
    # required (directly or through another requirement) vs only an extra (test) or unrelated
    assert {"kdstream", "zarr", "torch", "numpy"} <= names and "pytest" not in names and "moto" not in names
    site = tmp_path / "site-packages"
    _dist(site, "zarr-3.1.0", {"LICENSE.txt": MIT.encode()})
    _dist(site, "Some_Tool-1.0", {"LICENSE": MIT.encode()})
    assert [p.parent.name for p in license_files(site, {"zarr", "some-tool"})] == ["Some_Tool-1.0.dist-info",
                                                                                   "zarr-3.1.0.dist-info"]
    assert [p.parent.name for p in license_files(site, names)] == ["zarr-3.1.0.dist-info"]


def test_the_installed_corpus_is_deterministic_has_duplicates_and_a_stable_fingerprint():
    a, b = load_corpus("licenses"), load_corpus("licenses")
    assert a.texts == b.texts and a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert a.describe()["source"] == "licenses"
    groups = Counter(a.texts)
    assert max(groups.values()) >= 2  # e.g. the many copies of the MIT, BSD and Apache texts
    assert all(len(t) >= 200 for t in a.texts)
    mixed = load_corpus("demo+licenses")
    assert sorted(mixed.texts) == sorted(demo_documents() + a.texts)
    assert mixed.texts != demo_documents() + a.texts  # shuffled: a prefix sees both corpora
    assert mixed.fingerprint == load_corpus("demo+licenses").fingerprint != a.fingerprint


def test_a_license_share_keeps_whole_texts_up_to_that_share_of_the_characters():
    demo, licenses = demo_documents(), license_documents()
    whole = load_corpus("demo+licenses")
    chars = lambda docs: sum(len(d) for d in docs)  # noqa: E731
    kept_by_share = {}
    for share in (0.1, 0.3):
        corpus = load_corpus(f"demo+licenses:{share}")
        assert corpus.fingerprint == load_corpus(f"demo+licenses:{share}").fingerprint != whole.fingerprint
        kept = Counter(corpus.texts) - Counter(demo)
        assert Counter(corpus.texts) - kept == Counter(demo)  # every demo document, once
        assert not kept - Counter(licenses)  # whole license texts only, never more copies than installed
        assert 0 < chars(kept.elements()) <= share * chars(corpus.texts) + 1
        kept_by_share[share] = kept
    assert chars(kept_by_share[0.1].elements()) < chars(kept_by_share[0.3].elements())


def test_a_bad_license_share_is_refused_in_one_line():
    import pytest

    from kdstream.errors import KdError

    for name in ("demo+licenses:0", "demo+licenses:1.5", "demo+licenses:x"):
        with pytest.raises(KdError, match="license share"):
            load_corpus(name)
