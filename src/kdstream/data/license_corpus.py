"""An embedded corpus with natural duplication: the license and notice texts that installed
Python packages ship in their ``*.dist-info`` directories.

Every environment with kdstream installed has them (no download), and many are copies of the same
MIT / BSD / Apache texts, whole or with another copyright line: the kind of repeated, low-entropy
text the paper finds models memorize. Exact duplicates are KEPT, unlike the demo corpus: they are
the point. Only kdstream's own dependencies count (the closure of its required distributions,
without extras): a package installed beside them for other work does not change the corpus. The
texts still depend on the installed versions, so the corpus is deterministic for a given
environment (files visited in sorted path order) and the corpus fingerprint records exactly what
was used.
"""
from __future__ import annotations

import importlib.metadata
import random
import sysconfig
from pathlib import Path

# file names (upper-cased prefixes) that hold license or notice text inside a dist-info directory;
# everything under dist-info/licenses/ (PEP 639) counts too
LICENSE_PREFIXES = ("LICENSE", "LICENCE", "COPYING", "NOTICE")
MIN_CHARS = 200  # shorter files are pointers ("see LICENSE.txt") or SPDX one-liners, not text
MAX_BYTES = 1 << 20  # larger files are bundles of generated notices, not a license
MIX_SEED = 0  # the fixed shuffle of demo+licenses


def site_dirs() -> list[Path]:
    """The running interpreter's site-packages (purelib and platlib, once each)."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths["purelib"]), Path(paths["platlib"])})


def requirement_closure(root: str = "kdstream") -> set[str]:
    """Canonical names of ``root`` and every distribution it requires, transitively, without
    extras (markers evaluated for this interpreter); requirements not installed are skipped."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _dist_name(info: Path) -> str:
    """The canonical distribution name of a ``NAME-VERSION.dist-info`` directory."""
    from packaging.utils import canonicalize_name

    return canonicalize_name(info.name[: -len(".dist-info")].rsplit("-", 1)[0])


def license_files(site: Path, names: set[str] | None = None) -> list[Path]:
    """License and notice files of the installed distributions under ``site`` (only those in
    ``names``, canonical, when given), in sorted order."""
    out = []
    for info in sorted(site.glob("*.dist-info")):
        if names is not None and _dist_name(info) not in names:
            continue
        for path in sorted(info.rglob("*")):
            rel = path.relative_to(info).parts
            if path.is_file() and (path.name.upper().startswith(LICENSE_PREFIXES) or rel[0] == "licenses"):
                out.append(path)
    return out


def _text(path: Path) -> str | None:
    """The file as text, or None when it is not license text: too large, not valid UTF-8 (binary
    or another encoding: never decoded with replacements), NUL bytes, or too short."""
    if path.stat().st_size > MAX_BYTES:
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.replace("\r\n", "\n").strip()  # CRLF copies of a text are the same text
    if "\x00" in text or len(text) < MIN_CHARS:
        return None
    return text


def license_documents(sites: list[Path] | None = None) -> list[str]:
    """One document per license/notice file, in sorted path order, exact duplicates kept: of every
    distribution under ``sites``, or by default of kdstream's dependency closure in this
    environment's site-packages."""
    names = None if sites is not None else requirement_closure()
    out = []
    for site in sites if sites is not None else site_dirs():
        for path in license_files(site, names):
            text = _text(path)
            if text is not None:
                out.append(text)
    return out


def license_share(demo: list[str], licenses: list[str], share: float) -> list[str]:
    """The license documents that make up at most ``share`` of the mix's characters, drawn in a
    fixed shuffled order, whole (a document that would overshoot is skipped, the next tried).

    The full set is ~84% of demo+licenses's text, and its most copied texts (the Apache license
    ~50 times) are memorized by every model; a share keeps natural duplication (whole texts with
    their natural copy counts) while making it rare, as in the paper's web text."""
    order = list(licenses)
    random.Random(MIX_SEED).shuffle(order)
    budget = share / (1.0 - share) * sum(len(d) for d in demo)  # 0 < share < 1 (corpus.license_share_of)
    out, used = [], 0
    for doc in order:
        if used + len(doc) <= budget:
            out.append(doc)
            used += len(doc)
    return out


def mixed_documents(demo: list[str], licenses: list[str]) -> list[str]:
    """Both corpora in one fixed shuffled order: a study trains on a prefix of the packed stream,
    so a plain concatenation would give the first examples only from the first corpus."""
    docs = [*demo, *licenses]
    random.Random(MIX_SEED).shuffle(docs)
    return docs
