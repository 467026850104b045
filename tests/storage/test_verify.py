"""verify_store and `kdstream store verify|info`: every corrupt chunk is named, not just the first."""
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_store import as_version_3

from benchmarks.fixtures import topk_rows, write_rows
from kdstream.cli.store import store as store_cli
from kdstream.errors import KdError
from kdstream.storage import open_store
from kdstream.storage.verify import verify_store

L, K, V = 16, 4, 300
ATTRS = {
    "targets": "topk",
    "teacher": {"path": "/models/t", "name": "t", "config_sha256": "c0ffee", "weights_fingerprint": "f00d"},
    "tokenizer": {"sha256": "abc123", "vocab_size": V},
    "corpus": {"source": "demo", "fingerprint": "feed", "documents": 3},
    "engine": {"name": "vllm", "version": "0.0-test"},
    "options": {"top_k": K, "seq_len": L},
}


def synthetic(n, seed=0):
    """Rows of a valid store: example_id 0..n-1, top-k logprobs of a real softmax (mass < 1)."""
    return topk_rows(n, L, K, V, seed=seed)


def write(path, rows, chunk_rows=4, finalize=True):
    write_rows(path, rows, vocab=V, chunk_rows=chunk_rows, attrs=ATTRS, batch=3, finalize=finalize)


def flip_byte(chunk: Path) -> None:
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "s.zarr"
    write(path, synthetic(10))  # 10 rows, 4 per chunk: chunks 0:4, 4:8, 8:10 of each of 9 arrays
    return path


def test_a_good_store_verifies(good):
    report = verify_store(str(good))
    assert report.ok and report.corrupt == [] and report.problems == []
    assert report.chunks_checked == 9 * 3


def test_every_corrupt_chunk_is_named_and_readers_refuse_them(good):
    flip_byte(good / "topk_logprobs" / "c" / "1" / "0" / "0")
    flip_byte(good / "example_id" / "c" / "2")
    report = verify_store(str(good))
    assert not report.ok and report.chunks_checked == 27
    assert len(report.corrupt) == 2
    assert any(c.startswith("topk_logprobs chunk 1 (rows 4:8): crc32c checksum mismatch") for c in report.corrupt)
    assert any(c.startswith("example_id chunk 2 (rows 8:10): crc32c checksum mismatch") for c in report.corrupt)
    # The reader refuses each corrupt chunk, naming its array; intact chunks still read.
    store = open_store(str(good))
    store[0:4]
    with pytest.raises(KdError, match="corrupt chunk in topk_logprobs"):
        store[4:8]
    with pytest.raises(KdError, match="corrupt chunk in example_id"):
        store[8:10]


@pytest.mark.parametrize("name", ["topk_index", "id_table", "topk_shift", "target_code", "input_ids"])
def test_a_flipped_byte_in_any_array_is_named_and_refused(good, name):
    """Every array of the store, the per-chunk id table included, is checksummed chunk by chunk."""
    import zarr

    arr = zarr.open_group(str(good))[name]
    flip_byte(good / name / arr.metadata.encode_chunk_key((1,) + (0,) * (arr.ndim - 1)))
    report = verify_store(str(good))
    assert [c.split("): ")[0] for c in report.corrupt] == [f"{name} chunk 1 (rows 4:8"]
    store = open_store(str(good))
    store[0:4]
    with pytest.raises(KdError, match=f"corrupt chunk in {name}"):
        store[4:8]


def test_bytes_that_pass_the_checksum_but_do_not_decompress_are_named(good):
    import google_crc32c

    garbage = b"not blosc at all"  # with a valid crc32c trailer (little endian), as zarr writes it
    (good / "doc_index" / "c" / "0").write_bytes(garbage + struct.pack("<I", google_crc32c.value(garbage)))
    report = verify_store(str(good))  # format version 4: the object is not the one finalize listed
    assert not report.ok and len(report.corrupt) == 1
    assert report.corrupt[0].startswith("doc_index chunk 0 (rows 0:4): differs from the store's manifest")
    as_version_3(good)  # without a manifest: the decoder finds it out
    report = verify_store(str(good))
    assert not report.ok and len(report.corrupt) == 1
    assert report.corrupt[0].startswith("doc_index chunk 0 (rows 0:4): undecodable (blosc decompression error")


def test_a_lost_chunk_file_is_a_problem(good):
    # zarr reads an absent chunk as zeros; logprob 0 for all k candidates is an impossible mass k.
    (good / "topk_logprobs" / "c" / "2" / "0" / "0").unlink()
    report = verify_store(str(good))
    assert not report.ok and report.corrupt == []
    assert any("topk_logprobs chunk 2 (rows 8:10)" in p and "missing" in p for p in report.problems)


def test_missing_or_unreadable_arrays_are_problems(good):
    import shutil

    shutil.rmtree(good / "target_rank")
    (good / "doc_index" / "zarr.json").write_bytes(b"\xff not json")
    report = verify_store(str(good))
    assert not report.ok and report.chunks_checked == 7 * 3
    assert "array target_rank is missing" in report.problems
    assert any(p.startswith("array doc_index has unreadable metadata") for p in report.problems)


def test_an_incomplete_store_is_reported(tmp_path):
    write(tmp_path / "s.zarr", synthetic(10), finalize=False)  # two chunks written, last one buffered
    report = verify_store(str(tmp_path / "s.zarr"))
    assert not report.ok and report.corrupt == [] and report.chunks_checked == 27
    assert any("incomplete" in p for p in report.problems)


def test_example_ids_must_be_each_position_once(tmp_path):
    import zarr

    rows = synthetic(10)
    bad = np.array([0, 1, 2, 3, 4, 5, 6, 7, 7, 12])
    with pytest.raises(KdError, match="example 7 is stored more than once"):  # finalize refuses it
        write(tmp_path / "d.zarr", {**rows, "example_id": bad})
    write(tmp_path / "s.zarr", rows)
    as_version_3(tmp_path / "s.zarr")  # no manifest: only the values can tell
    zarr.open_group(str(tmp_path / "s.zarr"))["example_id"][:] = bad  # changed after it was finalized
    report = verify_store(str(tmp_path / "s.zarr"))
    assert not report.ok
    assert report.problems == ["example_id is not 0..9 each once: 1 duplicated (e.g. 7), 1 outside 0..9"]


def test_not_a_store_is_a_user_error(tmp_path):
    with pytest.raises(KdError, match="no logit store"):
        verify_store(str(tmp_path / "nothing.zarr"))


def test_cli_verify_lists_each_corrupt_chunk_and_exits_1(good):
    runner = CliRunner()
    ok = runner.invoke(store_cli, ["verify", str(good)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip().splitlines()[-1].startswith("ok: 27 chunks checked")

    flip_byte(good / "topk_index" / "c" / "0" / "0" / "0")
    flip_byte(good / "target_rank" / "c" / "1" / "0")
    bad = runner.invoke(store_cli, ["verify", str(good)])
    assert bad.exit_code == 1
    lines = bad.output.strip().splitlines()
    assert lines[0].startswith("corrupt: topk_index chunk 0 (rows 0:4)")
    assert lines[1].startswith("corrupt: target_rank chunk 1 (rows 4:8)")
    assert lines[-1] == "FAILED: 2 corrupt chunk(s), 0 other problem(s) in 27 chunks checked"


def test_cli_info_shows_provenance_even_when_incomplete(tmp_path):
    write(tmp_path / "s.zarr", synthetic(10), finalize=False)
    result = CliRunner().invoke(store_cli, ["info", str(tmp_path / "s.zarr")])
    assert result.exit_code == 0, result.output
    for text in ("complete: false", "vocab_size: 300", "k: 4", "seq_len: 16", "sha256: abc123",
                 "fingerprint: feed", "version: 0.0-test", "config_sha256: c0ffee", "created_at:", "options:"):
        assert text in result.output
    missing = CliRunner().invoke(store_cli, ["info", str(tmp_path / "nothing.zarr")])
    assert isinstance(missing.exception, KdError)  # the kdstream entry point prints it as one line, exit 2
