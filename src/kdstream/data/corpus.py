"""Load documents from local files, saved HF datasets, a hub name, or an embedded corpus."""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from kdstream.data.conversations import row_format
from kdstream.errors import KdError, shown

DEMO = "demo"  # `--dataset demo` selects the embedded standard-library corpus
LICENSES = "licenses"  # the installed packages' license and notice texts (natural duplication)
DEMO_LICENSES = "demo+licenses"  # both, in one fixed shuffled order
# `demo+licenses:S`: the license documents cut to a share S (0 < S < 1) of the mix's characters
EMBEDDED = (DEMO, LICENSES, DEMO_LICENSES)
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
_TEXT_BLOCK = 1 << 20  # bytes decoded at a time by the UTF-8 check


@dataclass(frozen=True)
class Corpus:
    texts: list[str]
    source: str  # what the user passed to --dataset
    fingerprint: str  # sha256 over the documents, in order

    def describe(self) -> dict:
        return {"source": self.source, "fingerprint": self.fingerprint, "documents": len(self.texts)}


def fingerprint_texts(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _corpus(texts: list[str], source: str, text_field: str) -> Corpus:
    if not texts:
        raise KdError(f"dataset {source} has no text in field {text_field!r}: add non-empty documents, "
                      "or pass the field that holds them with --text-field")
    return Corpus(texts, source, fingerprint_texts(texts))


def check_text_file(path: Path, field: str) -> None:
    """KdError for a text file that is blank (datasets fails with StopIteration) or not UTF-8
    (datasets fails later, with a traceback, when the row is read), naming the first bad byte.
    Decodes block by block: a character split across two blocks is carried to the next."""
    carry, base = b"", 0  # base: file offset of carry's first byte
    blank = True
    with open(path, "rb") as f:
        while block := f.read(_TEXT_BLOCK):
            blank = blank and not block.strip()
            data = carry + block
            try:
                data.decode("utf-8")
                carry, base = b"", base + len(data)
            except UnicodeDecodeError as exc:
                if exc.reason != "unexpected end of data" or exc.end != len(data):
                    raise _not_utf8(path, data[exc.start], base + exc.start) from None
                carry, base = data[exc.start :], base + exc.start  # a character cut by the block end
    if carry:
        raise _not_utf8(path, carry[0], base)
    if blank:
        raise KdError(f"dataset {path} has no text in field {field!r}: the file is empty, add documents to it")


def _not_utf8(path: Path, byte: int, offset: int) -> KdError:
    return KdError(f"dataset {path} is not UTF-8 text (byte 0x{byte:02x} at offset {offset}): re-encode it as UTF-8")


def _column(ds, text_field: str, source: str) -> list[str]:
    if text_field not in ds.column_names and row_format(dict.fromkeys(ds.column_names)) is not None:
        raise KdError(f"dataset {source} holds conversations (fields: {', '.join(ds.column_names)}): this step "
                      "reads text (chat datasets: precompute-logits, distill --dataset, kdstream reproduce; "
                      "docs/conversations.md); pass a text dataset, or --text-field naming a text column")
    if text_field not in ds.column_names:
        raise KdError(
            f"dataset {source} has no field {text_field!r} (fields: {', '.join(ds.column_names)}): "
            "pass the right one with --text-field"
        )
    values = ds[text_field]
    not_text = [i for i, t in enumerate(values) if not isinstance(t, str)]
    if not_text:  # a number, null, list or missing field: skipped, counted and named, never silently
        first = not_text[0]
        print(f"warning: dataset {source}: {len(not_text)} of {len(values)} records have a {text_field!r} that is "
              f"not a string (the first: record {first}, {shown(values[first], 40)}); they are skipped",
              file=sys.stderr)
    return [t for t in values if isinstance(t, str) and t.strip()]


def license_share_of(dataset: str) -> float | None:
    """S of a `demo+licenses:S` name; None for any other name. KdError for a bad S."""
    head, sep, tail = dataset.partition(":")
    if head != DEMO_LICENSES or not sep:
        return None
    try:
        share = float(tail)
    except ValueError:
        share = -1.0
    if not 0.0 < share < 1.0:
        raise KdError(f"dataset {dataset}: the license share after ':' must be a number between 0 and 1 "
                      "(exclusive), e.g. demo+licenses:0.3")
    return share


def _embedded(name: str) -> list[str]:
    from kdstream.data.demo_corpus import demo_documents
    from kdstream.data.license_corpus import license_documents, license_share, mixed_documents

    if name == DEMO:
        return demo_documents()
    if name == LICENSES:
        return license_documents()
    demo, licenses = demo_documents(), license_documents()
    share = license_share_of(name)
    if share is not None:
        licenses = license_share(demo, licenses, share)
    return mixed_documents(demo, licenses)


def load_corpus(dataset: str, text_field: str = "text", split: str = "train") -> Corpus:
    """Documents from ``dataset``: a .jsonl/.json/.parquet/.txt file, a directory written by
    ``Dataset.save_to_disk``, an embedded corpus (``demo``: standard-library docstrings;
    ``licenses``: the installed packages' license texts; ``demo+licenses``; ``demo+licenses:S``,
    the license texts cut to a share S of the characters), or a hub name (needs
    network).

    .txt files are split into documents at blank lines (paragraphs).
    """
    if dataset in EMBEDDED or license_share_of(dataset) is not None:
        return _corpus(_embedded(dataset), dataset, "text")

    import datasets

    datasets.disable_progress_bars()
    path = Path(dataset)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise KdError(
                f"dataset file {path} has an unsupported extension: use .jsonl, .json, .parquet or .txt"
            )
        field = "text" if builder == "text" else text_field
        if builder != "parquet":
            check_text_file(path, field)
        ds = load_file_dataset(path, builder)
        return _corpus(_column(ds, field, dataset), dataset, field)
    if path.is_dir():
        ds = load_saved_dataset(path, split)
        return _corpus(_column(ds, text_field, dataset), dataset, text_field)
    looks_like_hub = "/" in dataset and not dataset.startswith((".", "/")) and dataset.count("/") == 1
    if not looks_like_hub:
        raise KdError(
            f"dataset {dataset} not found: pass a .jsonl/.json/.parquet/.txt file, a saved dataset "
            "directory, `demo`, `licenses`, `demo+licenses[:SHARE]`, or a hub name like org/name"
        )
    try:
        ds = datasets.load_dataset(dataset, split=split)
    except Exception as exc:
        raise KdError(
            f"could not load hub dataset {dataset} ({exc.__class__.__name__}): check the name and your network, "
            "or download it and pass the local path"
        ) from None
    return _corpus(_column(ds, text_field, dataset), dataset, text_field)


def load_file_dataset(path: Path, builder: str):
    """A .jsonl/.json/.parquet/.txt file read by the ``datasets`` builder of that name (.txt: one
    document per paragraph); KdError naming the file when it cannot be read."""
    import datasets

    datasets.disable_progress_bars()
    kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # datasets raises many types for malformed files
        raise KdError(f"could not read dataset file {path} ({exc.__class__.__name__}): check its format") from None


def load_saved_dataset(path: Path, split: str):
    """The ``split`` of a ``save_to_disk`` directory (the dataset itself when it has no splits);
    KdError when the directory is not one, or lacks the split."""
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception:
        raise KdError(
            f"directory {path} is not a saved HF dataset: pass a file or a `save_to_disk` directory"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise KdError(f"dataset {path} has no split {split!r} (splits: {', '.join(ds)}): pass --split")
        ds = ds[split]
    return ds
