"""Read a logit store from a path or fsspec URL: random access and slices, decoded to numpy."""
from __future__ import annotations

from typing import Any

import numpy as np

from kdstream.errors import KdError
from kdstream.storage import encoding as enc
from kdstream.storage.schema import ALL_ARRAYS, FORMAT_NAME, FORMAT_VERSION, stored_arrays

# Decoded dtypes handed to users, whatever the on-disk encoding.
_DECODED = {
    "input_ids": np.int64,
    "example_id": np.int64,
    "doc_index": np.int64,
    "topk_ids": np.int64,
    "topk_logprobs": np.float32,
    "tail_mass": np.float32,
    "target_logprob": np.float32,
    "target_rank": np.int64,
    "sample_ids": np.int64,
    "sample_counts": np.int64,
    "sample_tail_count": np.int64,
}


class LogitStore:
    """``store[i]`` → dict of arrays for example i; ``store[a:b]`` → same keys, leading batch axis.

    Keys: input_ids (L,), topk_ids (L-1, k), topk_logprobs (L-1, k) (natural log, T = 1),
    tail_mass (L-1,), target_logprob (L-1,), target_rank (L-1,), example_id (), doc_index ().
    Row t of the teacher arrays is the distribution that predicts input_ids[t+1]. Logprobs come
    back decoded to float32 whatever the on-disk encoding (``attrs["encoding"]``); each is within
    ``attrs["encoding"]["max_abs_error"]`` nats of the teacher's value.
    """

    def __init__(self, group, url: str) -> None:
        self.group = group
        self.url = url
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.format_version = int(self.attrs.get("format_version", 1))
        # Version 1 stores: fp32 logprobs, no tail_mass array (computed from the top-k on read).
        self.encoding: dict[str, Any] = self.attrs.get("encoding") or enc.encoding_attrs("fp32")
        self.sampled = self.encoding["topk_logprobs"] == "sampled"
        self._arrays = {name: group[name] for name in stored_arrays(self.format_version, self.attrs.get("targets"))}

    def __len__(self) -> int:
        return int(self.attrs["num_examples"])

    @property
    def seq_len(self) -> int:
        return int(self.attrs["seq_len"])

    @property
    def k(self) -> int:
        return int(self.attrs["k"])

    @property
    def vocab_size(self) -> int:
        return int(self.attrs["vocab_size"])

    @property
    def chunk_rows(self) -> int:
        return int(self.attrs["chunk_rows"])

    def read(self, start: int, stop: int, keys: tuple[str, ...] = ALL_ARRAYS) -> dict[str, np.ndarray]:
        """Rows [start, stop) of the named arrays; one contiguous slice per array (whole chunks)."""
        if self.sampled and {"topk_ids", "topk_logprobs", "tail_mass"} & set(keys):
            return self._read_sampled(start, stop, keys)
        need = set(keys)
        stored_tail = "tail_mass" in self._arrays
        if "topk_logprobs" in need and self.encoding["topk_logprobs"] == "qdelta":
            need.add("tail_mass")  # the decoder renormalises each row to it
        if "tail_mass" in need and not stored_tail:
            need.add("topk_logprobs")  # a version 1 store: tail computed from the fp32 top-k
        raw = {name: self._read_raw(name, start, stop) for name in need if name in self._arrays}
        if not stored_tail and "tail_mass" in need:
            raw["tail_mass"] = enc.tail_mass(raw["topk_logprobs"])
        scale = self.encoding.get("scale")
        if "topk_logprobs" in raw and self.encoding["topk_logprobs"] == "qdelta":
            raw["topk_logprobs"] = enc.decode_topk(raw["topk_logprobs"], raw["tail_mass"], scale)
        return {name: raw[name].astype(_DECODED[name], copy=False) for name in keys}

    def _read_sampled(self, start: int, stop: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """A sampled store seen as top-k: the drawn ids, log(count / N), tail = tail draws / N."""
        other = tuple(k for k in keys if k not in ("topk_ids", "topk_logprobs", "tail_mass"))
        raw = self.read(start, stop, tuple(dict.fromkeys(other + ("sample_ids", "sample_counts", "sample_tail_count"))))
        ids, logprobs, tail = enc.decode_samples(raw["sample_ids"], raw["sample_counts"], raw["sample_tail_count"],
                                                 int(self.encoding["samples"]))
        raw.update(topk_ids=ids, topk_logprobs=logprobs, tail_mass=tail)
        return {name: raw[name].astype(_DECODED[name], copy=False) for name in keys}

    def _read_raw(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one array as stored; a failed checksum is a one-line KdError."""
        try:
            return np.asarray(self._arrays[name][start:stop])
        except KeyError:
            raise KeyError(f"store {self.url} has no array {name!r}") from None
        except (ValueError, RuntimeError) as exc:
            if "checksum" in str(exc).lower() or "decompress" in str(exc).lower():
                raise KdError(
                    f"store {self.url}: corrupt chunk in {name} rows {start}:{stop} ({exc}): "
                    "re-copy or regenerate the store"
                ) from None
            raise

    def __getitem__(self, index: int | slice) -> dict[str, np.ndarray]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("store slices must have step 1 (read contiguous rows, then subsample)")
            return self.read(start, stop)
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"example {index} out of range for a store of {len(self)}")
        return {k: v[0] for k, v in self.read(i, i + 1).items()}


def open_store(url: str, require_complete: bool = True) -> LogitStore:
    """Open a store written by ``precompute-logits`` (a local path or an fsspec URL)."""
    import zarr

    url = str(url)
    try:
        group = zarr.open_group(url, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        raise KdError(f"no logit store at {url}: run precompute-logits first or check the path") from None
    attrs = dict(group.attrs)
    if attrs.get("format") != FORMAT_NAME:
        raise KdError(f"{url} is a Zarr group but not a kdstream logit store: point --logits-store at one")
    if int(attrs.get("format_version", -1)) > FORMAT_VERSION:
        raise KdError(
            f"store {url} has format version {attrs['format_version']}, newer than this kdstream "
            f"reads ({FORMAT_VERSION}): upgrade kdstream"
        )
    if require_complete and not attrs.get("complete"):
        raise KdError(
            f"store {url} is incomplete (its precompute did not finish): rerun precompute-logits with the same options"
        )
    missing = [n for n in stored_arrays(int(attrs.get("format_version", 1)), attrs.get("targets")) if n not in group]
    if missing:
        raise KdError(f"store {url} is missing arrays {', '.join(missing)}: it is corrupt; regenerate it")
    return LogitStore(group, url)


def disk_bytes(url: str) -> int:
    """Bytes the store occupies (every array and metadata file), local or remote."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(url))
    return int(fs.du(path, total=True))
