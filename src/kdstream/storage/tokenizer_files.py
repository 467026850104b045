"""The teacher's tokenizer inside its store: written by precompute, read back so that a consumer
needs no teacher directory to decode the store's ids or align them with another tokenizer.

Layout (docs/store-format.md, "The tokenizer"): a group ``tokenizer/`` holding one uint8 array
per file, named as the file, shape (size,), one chunk, codecs bytes → blosc zstd → crc32c, with
``name``, ``size`` and ``sha256`` in its attributes. The store's ``tokenizer`` attribute lists
the same (``files``: [{name, size, sha256}], sorted by name): covered by the attributes' checksum
(integrity.py), that list is what readers trust, so a file flipped, cut short, swapped or lost is
refused (one line naming the store and the file) wherever it is read, and by finalize and verify.
Absent in stores written before it (they still read everywhere; their consumers pass the
teacher's tokenizer directory).

Only the plain-text and protobuf files of ALLOWED are stored, never a pickle or code; the files
are loaded with ``trust_remote_code=False`` (text.tokenizers.load_tokenizer), so an ``auto_map``
naming remote code is not honoured, and they are kept only when they load, alone, to the
tokenizer the store records (its ``tokenizer.sha256`` fingerprint).
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from kdstream.errors import KdError
from kdstream.outputs import refuse_link
from kdstream.text.match import recorded_fingerprint, tokenizers_match

GROUP = "tokenizer"
# What AutoTokenizer reads from a directory, as plain text or protobuf (sentencepiece models).
# config.json: older tokenizers (no tokenizer_class in tokenizer_config.json) are resolved through
# the model type it names. Never a pickle, never code (*.py).
ALLOWED = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json", "config.json",
})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record(files: dict[str, bytes]) -> list[dict[str, Any]]:
    """The ``tokenizer.files`` attribute: [{name, size, sha256}] sorted by name."""
    return [{"name": name, "size": len(files[name]), "sha256": sha256(files[name])} for name in sorted(files)]


def recorded(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """The files the store with group attributes ``attrs`` carries ([] for a store without them)."""
    return list((attrs.get("tokenizer") or {}).get("files") or [])


def carries_tokenizer(store) -> bool:
    """Whether ``store`` (a LogitStore or StoreUnion: any of its parts) holds its tokenizer's files."""
    return _source(store) is not None


# -- writing (precompute) ----------------------------------------------------------------------

def collect(directory: str | Path, fingerprint: str) -> tuple[dict[str, bytes], str | None]:
    """({name: bytes} of the ALLOWED files of ``directory``, None) when they load, alone, to the
    tokenizer of ``fingerprint`` (tokenizer_fingerprint's sha256); ({}, why) when they do not: the
    store is then written without them."""
    d = Path(directory)
    files = {name: (d / name).read_bytes() for name in sorted(ALLOWED) if (d / name).is_file()}
    if not files:
        return {}, f"{d} holds none of the tokenizer files kdstream stores ({', '.join(sorted(ALLOWED))})"
    try:
        got = _loaded_fingerprint(files)
    except KdError as exc:
        return {}, f"the tokenizer files of {d} do not load alone ({exc})"
    if not tokenizers_match(got, fingerprint):
        return {}, (f"the tokenizer files of {d} load to another tokenizer (sha256 {got[:12]}, not {fingerprint[:12]}) "
                    "without the rest of the directory")
    return files, None


def write_files(group, files: dict[str, bytes]) -> None:
    """Write each file as the array ``tokenizer/<name>`` of ``group``, unless it is there already
    with the same bytes (a resumed store, or another worker of the same store wrote it)."""
    from zarr.codecs import BloscCodec, Crc32cCodec
    from zarr.errors import ContainsArrayError

    if not files:
        return
    sub = group.require_group(GROUP)
    for name, data in files.items():
        _check_name(name)
        try:
            if _read_array(sub, name, len(data)) == data:
                continue
        except (KeyError, FileNotFoundError, ValueError, RuntimeError):  # absent, half-written or damaged
            pass  # written (again) below
        # one chunk, zstd at the store's level (writer.BLOSC_LEVEL), crc32c as every chunk of the store
        codecs = [BloscCodec(cname="zstd", clevel=6, shuffle="noshuffle"), Crc32cCodec()]
        spec = dict(shape=(len(data),), chunks=(max(1, len(data)),), dtype=np.uint8, compressors=codecs, fill_value=0,
                    attributes={"name": name, "size": len(data), "sha256": sha256(data)})
        try:
            arr = sub.create_array(name, **spec)
        except ContainsArrayError:  # there, its chunk not (yet) right: another worker may be writing it now
            arr = _same_array(sub, name, spec)  # then write the same bytes beside it, never delete its array
            if arr is None:  # a stale or damaged one, of other bytes
                arr = sub.create_array(name, **spec, overwrite=True)
        arr[...] = np.frombuffer(data, dtype=np.uint8)


def _same_array(sub, name: str, spec: dict):
    """``sub[name]`` when it is an array of ``spec``'s shape and attributes (the one a worker writing
    the same file creates), else None."""
    try:
        arr = sub[name]
        same = arr.shape == spec["shape"] and dict(arr.attrs) == spec["attributes"]
    except Exception:  # unreadable metadata: a damaged array
        return None
    return arr if same else None


def disk_bytes(url: str) -> int:
    """Bytes the ``tokenizer/`` group of the store at ``url`` occupies (0 without one)."""
    from kdstream.storage.reader import disk_bytes as du

    try:
        return du(f"{str(url).rstrip('/')}/{GROUP}")
    except (OSError, NotImplementedError, ValueError):
        return 0


# -- checking (finalize, verify) and reading --------------------------------------------------------

def problems(group, attrs: dict[str, Any]) -> list[str]:
    """One line per recorded file that is missing, unreadable or not the bytes the store records."""
    out = []
    for entry in recorded(attrs):
        try:
            _verified(group, entry)
        except _Bad as exc:
            out.append(str(exc))
    return out


def read_files(store) -> dict[str, bytes]:
    """{name: bytes} of the tokenizer files of ``store`` (LogitStore or StoreUnion: its first part
    that carries them), each checked against the store's record; {} when it carries none.
    KdError (one line, naming the store and the file) when one is missing or damaged."""
    part = _source(store)
    if part is None:
        return {}
    files = {}
    for entry in recorded(part.attrs):
        try:
            files[entry["name"]] = _verified(part.group, entry)
        except _Bad as exc:
            raise KdError(f"store {part.url}: {exc}: re-copy or regenerate the store, or pass the teacher's own "
                          "tokenizer directory") from None
    return files


def store_tokenizer(store):
    """The tokenizer ``store`` carries, loaded with trust_remote_code=False and checked against the
    fingerprint the store records; None for a store written without it. KdError when its files
    are damaged or load to another tokenizer."""
    files = read_files(store)
    if not files:
        return None
    with tempfile.TemporaryDirectory(prefix="kdstream-tokenizer-") as d:
        _write_dir(Path(d), files)
        return _load_checked(store, Path(d))


def teacher_tokenizer(store, path: str | None, missing: str):
    """The store's (teacher's) tokenizer: ``--teacher-tokenizer`` ``path`` when given, checked
    against the fingerprint the store records; else the one the store carries (store_tokenizer,
    checked the same way). KdError ``missing`` (the caller's one line) when there is neither (a
    store written before stores carried their tokenizer)."""
    from kdstream.text.tokenizers import load_tokenizer, tokenizer_fingerprint

    if path is None:
        tok = store_tokenizer(store)
        if tok is None:
            raise KdError(missing)
        return tok
    tok = load_tokenizer(path)
    mine, theirs = tokenizer_fingerprint(tok)["sha256"], recorded_fingerprint(store).get("sha256")
    if not tokenizers_match(mine, theirs):
        raise KdError(f"--teacher-tokenizer {path} is not the tokenizer of {store.url} (sha256 {mine[:12]}, the store "
                      f"records {str(theirs)[:12]}): pass the teacher's own tokenizer")
    return tok


def export_tokenizer(store, out_dir: str | Path) -> list[str]:
    """Write the tokenizer files ``store`` carries into the new (or empty) folder ``out_dir``, so
    that ``AutoTokenizer.from_pretrained(out_dir)`` loads the teacher's tokenizer; returns their
    names. Written into a sibling folder first, checked (loaded, fingerprint), then renamed:
    a failure leaves no half-written ``out_dir``. KdError when ``out_dir`` exists with anything in
    it (kdstream never replaces what it did not create), or the store carries no tokenizer."""
    out = Path(out_dir)
    _check_target(out)
    files = read_files(store)
    if not files:
        raise KdError(f"store {store.url} carries no tokenizer (written before kdstream stored the teacher's tokenizer "
                      "in its stores): use the teacher's own tokenizer directory (distill --teacher-tokenizer DIR)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # mode from the umask, as OUT would have (mkdtemp's would be 0700)
    try:
        _write_dir(tmp, files)
        _load_checked(store, tmp)
        _check_target(out)  # again: something may have appeared while we wrote
        if out.exists():
            out.rmdir()  # empty (checked): fails rather than deletes should it fill meanwhile
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(files)


# -- helpers ----------------------------------------------------------------------------------

class _Bad(Exception):
    """A tokenizer file that is missing, unreadable or not the recorded bytes (its message says which)."""


def _source(store):
    """The LogitStore whose tokenizer files ``store`` uses: itself, or a union's first part that has them."""
    for part in getattr(store, "parts", [store]):
        if recorded(part.attrs):
            return part
    return None


def _check_name(name: str) -> None:
    if name not in ALLOWED:  # also what keeps a name from leaving the folder it is written to
        raise ValueError(f"{name!r} is not a tokenizer file kdstream stores ({', '.join(sorted(ALLOWED))})")


def _read_array(sub, name: str, size: object) -> bytes:
    """The file's bytes; ValueError, before reading, unless its array is at most ``size`` bytes in
    one chunk (a shape re-declared larger would be read whole before the sizes are compared)."""
    arr = sub[name]
    n = arr.shape[0] if arr.ndim == 1 else -1
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= n <= size or \
            tuple(arr.chunks) != (max(1, n),) or np.dtype(arr.dtype) != np.uint8:
        raise ValueError(f"its array has shape {tuple(arr.shape)}, chunks {tuple(arr.chunks)} and dtype {arr.dtype}, "
                         f"not the {str(size)[:20]} bytes in one uint8 chunk the store records")
    return np.asarray(arr[...], dtype=np.uint8).tobytes()


def _verified(group, entry: dict[str, Any]) -> bytes:
    """The bytes of recorded file ``entry``, after checking its size and sha256; _Bad otherwise."""
    name = str(entry.get("name"))
    if name not in ALLOWED:  # the record is checksummed, but a name is never trusted with a path
        raise _Bad(f"tokenizer file {name!r} is not one kdstream stores or reads")
    where = f"tokenizer file {name} ({GROUP}/{name}/)"
    try:
        data = _read_array(group[GROUP], name, entry.get("size"))
    except KeyError:
        raise _Bad(f"{where} is missing") from None
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # crc32c mismatch, undecodable, bad metadata
        raise _Bad(f"{where} is corrupt ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if len(data) != entry.get("size") or sha256(data) != entry.get("sha256"):
        raise _Bad(f"{where} does not match its sha256 in the store's attributes (damaged or replaced)")
    return data


def _write_dir(d: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        _check_name(name)
        (d / name).write_bytes(data)


def _loaded_fingerprint(files: dict[str, bytes]) -> str:
    from kdstream.text.tokenizers import load_tokenizer, tokenizer_fingerprint

    with tempfile.TemporaryDirectory(prefix="kdstream-tokenizer-") as d:
        _write_dir(Path(d), files)
        return tokenizer_fingerprint(load_tokenizer(d))["sha256"]


def _load_checked(store, d: Path):
    """The tokenizer in folder ``d`` (the store's files), which must be the one the store records."""
    from kdstream.text.tokenizers import load_tokenizer, tokenizer_fingerprint

    try:
        tok = load_tokenizer(d)
    except KdError as exc:
        raise KdError(f"store {store.url}: the tokenizer files it carries do not load ({exc}): pass the teacher's "
                      "own tokenizer directory") from None
    got, want = tokenizer_fingerprint(tok)["sha256"], recorded_fingerprint(store).get("sha256")
    if not tokenizers_match(got, want):
        raise KdError(f"store {store.url}: the tokenizer files it carries load to another tokenizer (sha256 "
                      f"{got[:12]}, the store records {str(want)[:12]}): pass the teacher's own tokenizer directory")
    return tok


def _check_target(out: Path) -> None:
    refuse_link(out, "the tokenizer folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KdError(f"{out} exists and is not an empty folder: choose a new folder for the tokenizer "
                      "(kdstream never replaces what it did not create)")
