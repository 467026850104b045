"""Load documents from local files, saved HF datasets, a hub name, or the embedded demo corpus."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from kdstream.errors import KdError

DEMO = "demo"  # `--dataset demo` selects the embedded standard-library corpus
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


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


def _corpus(texts: list[str], source: str) -> Corpus:
    if not texts:
        raise KdError(f"dataset {source} has no non-empty documents: check --text-field and the file")
    return Corpus(texts, source, fingerprint_texts(texts))


def _column(ds, text_field: str, source: str) -> list[str]:
    if text_field not in ds.column_names:
        raise KdError(
            f"dataset {source} has no field {text_field!r} (fields: {', '.join(ds.column_names)}): "
            "pass the right one with --text-field"
        )
    return [t for t in ds[text_field] if isinstance(t, str) and t.strip()]


def load_corpus(dataset: str, text_field: str = "text", split: str = "train") -> Corpus:
    """Documents from ``dataset``: a .jsonl/.json/.parquet/.txt file, a directory written by
    ``Dataset.save_to_disk``, ``demo`` (embedded), or a hub name (needs network).

    .txt files are split into documents at blank lines (paragraphs).
    """
    if dataset == DEMO:
        from kdstream.data.demo_corpus import demo_documents

        texts = demo_documents()
        return _corpus(texts, DEMO)

    import datasets

    datasets.disable_progress_bars()
    path = Path(dataset)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise KdError(
                f"dataset file {path} has an unsupported extension: use .jsonl, .json, .parquet or .txt"
            )
        kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        except Exception as exc:  # datasets raises many types for malformed files
            raise KdError(f"could not read dataset file {path} ({exc.__class__.__name__}): check its format") from None
        field = "text" if builder == "text" else text_field
        return _corpus(_column(ds, field, dataset), dataset)
    if path.is_dir():
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
        return _corpus(_column(ds, text_field, dataset), dataset)
    looks_like_hub = "/" in dataset and not dataset.startswith((".", "/")) and dataset.count("/") == 1
    if not looks_like_hub:
        raise KdError(
            f"dataset {dataset} not found: pass a .jsonl/.json/.parquet/.txt file, a saved dataset "
            "directory, `demo`, or a hub name like org/name"
        )
    try:
        ds = datasets.load_dataset(dataset, split=split)
    except Exception as exc:
        raise KdError(
            f"could not load hub dataset {dataset} ({exc.__class__.__name__}): check the name and your network, "
            "or download it and pass the local path"
        ) from None
    return _corpus(_column(ds, text_field, dataset), dataset)
