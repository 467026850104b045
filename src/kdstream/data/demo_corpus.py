"""The embedded demo corpus: standard-library docstrings, available on every Python install.

Deterministic for a given Python version (modules and members are visited in sorted order, and
duplicates are dropped by first occurrence); the corpus fingerprint records exactly what was used.
"""
from __future__ import annotations

import importlib
import inspect
import warnings

# Pure-Python, import-safe standard-library modules with rich docstrings. Fixed list (not
# sys.stdlib_module_names) so the corpus does not depend on which optional modules are built.
DEMO_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs",
    "collections", "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email", "enum", "filecmp", "fnmatch", "fractions",
    "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html", "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools",
    "json", "logging", "lzma", "mailbox", "math", "mimetypes", "netrc", "numbers", "operator",
    "optparse", "os", "pathlib", "pdb", "pickle", "pkgutil", "platform", "plistlib", "poplib",
    "pprint", "queue", "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "trace", "traceback", "types", "typing", "unittest", "urllib.parse", "urllib.request",
    "uuid", "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo",
)

MIN_CHARS = 200  # shorter docstrings are mostly one-line summaries: poor training text


def _docstrings(module) -> list[str]:
    docs = [inspect.getdoc(module) or ""]
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        member = getattr(module, name, None)
        if inspect.isclass(member) or inspect.isfunction(member):
            if getattr(member, "__module__", None) != module.__name__:
                continue  # re-exports would be counted twice
            docs.append(inspect.getdoc(member) or "")
            if inspect.isclass(member):
                for attr in sorted(vars(member)):
                    if not attr.startswith("_") and inspect.isfunction(vars(member)[attr]):
                        docs.append(inspect.getdoc(vars(member)[attr]) or "")
    return docs


def demo_documents() -> list[str]:
    """The demo corpus as a list of documents (one docstring each), in a fixed order."""
    seen: set[str] = set()
    out: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in DEMO_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            for doc in _docstrings(module):
                doc = doc.strip()
                if len(doc) >= MIN_CHARS and doc not in seen:
                    seen.add(doc)
                    out.append(doc)
    return out
