"""Write a logit store: create it incomplete, append rows chunk by chunk, mark it complete last."""
from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np

from kdstream.errors import KdError
from kdstream.storage import encoding as enc
from kdstream.storage.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    array_specs,
    default_chunk_rows,
    stored_arrays,
)


BLOSC_LEVEL = 5  # zstd level in blosc: 9 saves ~5 B/token at k=64 but wrote >10x slower (store_encoding_bench)


def _codecs():
    from zarr.codecs import BloscCodec, Crc32cCodec

    # Byte shuffle (blosc, typesize = the dtype's size) groups the mostly-zero high bytes of the
    # small integer codes, then zstd; then a crc32c checksum of the compressed bytes, so a flipped
    # byte in any chunk is caught. Both codecs are in the Zarr v3 specification.
    return [BloscCodec(cname="zstd", clevel=BLOSC_LEVEL, shuffle="shuffle"), Crc32cCodec()]


class StoreWriter:
    """Sequential writer. Rows are buffered until a whole chunk is ready, so each chunk is written
    exactly once (no read-modify-write) and a crash leaves ``complete`` False.

    ``url`` is a local path or an fsspec URL (``s3://…``).
    """

    def __init__(
        self,
        url: str,
        *,
        num_examples: int,
        seq_len: int,
        k: int,
        vocab_size: int,
        attrs: dict[str, Any],
        chunk_rows: int | None = None,
        overwrite: bool = False,
        encoding: str = enc.DEFAULT_ENCODING,
        samples: int | None = None,
    ) -> None:
        import zarr

        self.url = str(url)
        self.num_examples = num_examples
        self.encoding = encoding
        self.encoding_attrs = enc.encoding_attrs(encoding, samples)  # ValueError on an unknown name
        self.arrays = stored_arrays(targets="sampled" if encoding == "sampled" else "topk")
        self.chunk_rows = chunk_rows or default_chunk_rows(seq_len, k, vocab_size, num_examples, encoding)
        self._check_target(overwrite)
        self.specs = array_specs(seq_len, k, vocab_size, encoding)
        # The attributes (with complete=False) go into the very first metadata write, so a
        # store killed at any later point is recognisably an unfinished kdstream store.
        self.group = zarr.open_group(
            self.url,
            mode="w",
            zarr_format=3,
            attributes={
                **attrs,
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "num_examples": num_examples,
                "seq_len": seq_len,
                "k": k,
                "vocab_size": vocab_size,
                "chunk_rows": self.chunk_rows,
                "dtypes": {n: str(dt) for n, (_, dt) in self.specs.items()},
                "encoding": self.encoding_attrs,
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "complete": False,
            },
        )
        for name, (shape, dtype) in self.specs.items():
            self.group.create_array(
                name,
                shape=(num_examples, *shape),
                chunks=(self.chunk_rows, *shape),
                dtype=dtype,
                compressors=_codecs(),
                fill_value=0,
            )
        self._buffer: dict[str, list[np.ndarray]] = {n: [] for n in self.arrays}
        self._buffered = 0
        self.rows_written = 0

    def _check_target(self, overwrite: bool) -> None:
        import zarr

        try:
            existing = zarr.open_group(self.url, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            return
        attrs = dict(existing.attrs)
        if attrs.get("format") != FORMAT_NAME and not overwrite:
            raise KdError(f"{self.url} exists and is not a kdstream store: choose another --out or pass --overwrite")
        if attrs.get("complete") and not overwrite:
            raise KdError(f"a complete store already exists at {self.url}: pass --overwrite to replace it")

    def _encode(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Teacher values as produced (fp32 logprobs) → on-disk arrays of ``self.encoding``."""
        rows = dict(rows)
        if self.encoding == "sampled":
            return rows  # drawn by the caller (encoding.draw_samples)
        if "tail_mass" not in rows:
            rows["tail_mass"] = enc.tail_mass(rows["topk_logprobs"])  # (n, L-1)
        scale = self.encoding_attrs["scale"]
        if self.encoding == "qdelta":
            rows["topk_logprobs"] = enc.encode_topk(rows["topk_logprobs"], scale)  # (n, L-1, k) uint16
        return rows

    def append(self, rows: dict[str, np.ndarray]) -> None:
        """Add the next rows, same leading length: every array of ``self.arrays`` but ``tail_mass``
        (computed here from the top-k), logprobs as float (decoded values; encoded here)."""
        n = len(rows["input_ids"])
        rows = self._encode(rows)
        for name in self.arrays:
            arr = np.asarray(rows[name])
            shape, dtype = self.specs[name]
            if arr.shape != (n, *shape):
                raise ValueError(f"{name}: expected shape {(n, *shape)}, got {arr.shape}")
            self._buffer[name].append(arr.astype(dtype, copy=False))
        self._buffered += n
        if self.rows_written + self._buffered > self.num_examples:
            raise ValueError("more rows appended than the store was created for")
        while self._buffered >= self.chunk_rows:
            self._flush(self.chunk_rows)

    def _flush(self, count: int) -> None:
        start = self.rows_written
        for name in self.arrays:
            joined = np.concatenate(self._buffer[name])
            self.group[name][start : start + count] = joined[:count]
            self._buffer[name] = [joined[count:]]
        self._buffered -= count
        self.rows_written += count

    def finalize(self, extra_attrs: dict[str, Any] | None = None) -> None:
        """Flush the last partial chunk, check every row was written, then set ``complete``."""
        if self._buffered:
            self._flush(self._buffered)
        if self.rows_written != self.num_examples:
            raise ValueError(f"store has {self.rows_written} of {self.num_examples} rows; not marking complete")
        self.group.attrs.update({**(extra_attrs or {}), "complete": True})
