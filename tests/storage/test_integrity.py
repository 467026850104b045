"""Format version 4's integrity record: every chunk checked against the manifest finalize wrote,
attributes and manifest against their checksums, a store that changes under a reader stops it,
and a resumed store never ends complete but corrupt."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_verify import ATTRS, K, L, V, synthetic, write

from kdstream.errors import KdError
from kdstream.storage import StoreWriter, open_store
from kdstream.storage.finalize import finalize_store
from kdstream.storage.verify import verify_store

N, R = 10, 4  # chunks 0:4, 4:8, 8:10


def edit_attrs(path: Path, **changes) -> None:
    """Change group attributes in zarr.json by hand, as a careless user or a bad copy would."""
    meta = json.loads((path / "zarr.json").read_text())
    for key, value in changes.items():
        meta["attributes"][key] = value
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.fixture
def good(tmp_path) -> Path:
    write(tmp_path / "s.zarr", synthetic(N))
    return tmp_path / "s.zarr"


def test_a_finalized_store_has_an_identity_that_a_copy_keeps(good, tmp_path):
    store = open_store(str(good))
    assert store.format_version == 4 and len(store.identity) == 64
    shutil.copytree(good, tmp_path / "copy.zarr")
    assert open_store(str(tmp_path / "copy.zarr")).identity == store.identity
    assert open_store(str(good), identity=store.identity).identity == store.identity
    write(tmp_path / "other.zarr", synthetic(N, seed=1))  # other rows, the same attributes: another store
    assert open_store(str(tmp_path / "other.zarr")).identity != store.identity
    manifest = zarr.open_group(str(good), mode="r")["manifest_crc32c"][:]
    assert manifest.shape == (len(store._arrays), 3) and (manifest != 0).all()


def test_a_missing_chunk_is_an_error_in_every_array(good):
    for name in ("topk_logprobs", "id_table", "example_id"):
        arr = zarr.open_group(str(good), mode="r")[name]
        key = arr.metadata.encode_chunk_key((1,) + (0,) * (arr.ndim - 1))
        (good / name / key).rename(good / "aside")
        with pytest.raises(KdError, match=rf"{name} chunk 1 \(rows 4:8, file {name}/{key}\) is missing"):
            open_store(str(good))[4:8]
        report = verify_store(str(good))
        assert not report.ok and any(p.startswith(f"{name} chunk 1 (rows 4:8): chunk file missing")
                                     for p in report.problems)
        (good / "aside").rename(good / name / key)
    assert verify_store(str(good)).ok


def test_a_chunk_swapped_in_from_another_store_is_refused(good, tmp_path):
    write(tmp_path / "other.zarr", synthetic(N, seed=1))  # same shapes, other values
    key = Path("topk_logprobs/c/1/0/0")
    shutil.copy(tmp_path / "other.zarr" / key, good / key)  # intact in itself: its own crc32c holds
    store = open_store(str(good))
    store[0:4]
    with pytest.raises(KdError, match=r"differs from its manifest .*topk_logprobs chunk 1|topk_logprobs chunk 1 .*"
                                      r"differs from its manifest"):
        store[4:8]
    report = verify_store(str(good))
    assert [c.split(" (rewritten")[0] for c in report.corrupt] == [
        "topk_logprobs chunk 1 (rows 4:8): differs from the store's manifest"]


def test_a_store_rewritten_under_an_open_reader_stops_it(good):
    store = open_store(str(good))
    before = store[0:4]
    rows = synthetic(N, seed=2)
    w = StoreWriter(str(good), num_examples=N, seq_len=L, k=K, vocab_size=V, attrs=ATTRS, chunk_rows=R,
                    overwrite=True)
    w.write_chunk(0, {k: v[0:4] for k, v in rows.items()})  # mid-rewrite: chunk 0 new, the others gone
    with pytest.raises(KdError, match="changed since it was finalized or opened: input_ids chunk 0"):
        store[0:4]
    with pytest.raises(KdError, match=r"chunk 1 \(rows 4:8, .*\) is missing \(lost, or the store is being rewritten\)"):
        store[4:8]
    for c in (1, 2):
        w.write_chunk(c, {k: v[c * R : (c + 1) * R] for k, v in rows.items()})
    w.finalize()
    with pytest.raises(KdError, match="changed since it was finalized or opened"):
        store[8:10]
    with pytest.raises(KdError, match="not the store this run started with"):
        open_store(str(good), identity=store.identity)
    assert not np.array_equal(open_store(str(good))[0:4]["topk_ids"], before["topk_ids"])


@pytest.mark.parametrize("edit", ["scale", "complete", "k"])
def test_edited_attributes_are_refused(good, edit):
    attrs = json.loads((good / "zarr.json").read_text())["attributes"]
    if edit == "scale":
        edit_attrs(good, encoding={**attrs["encoding"], "scale": attrs["encoding"]["scale"] * 2})
    elif edit == "k":
        edit_attrs(good, k=K - 1)
    else:  # a partial store (no integrity record yet) marked complete by hand
        edit_attrs(good, complete=False)
        meta = json.loads((good / "zarr.json").read_text())
        del meta["attributes"]["integrity"]
        meta["attributes"]["complete"] = True
        (good / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(KdError, match="attributes do not match their checksum"):
        open_store(str(good))
    report = verify_store(str(good))
    assert not report.ok and any("attributes do not match their checksum" in p for p in report.problems)


def test_an_edited_or_lost_manifest_is_refused(good):
    crcs = zarr.open_group(str(good))["manifest_crc32c"]
    crcs[0, 0] = 12345
    with pytest.raises(KdError, match="chunk manifest .* does not match its checksum"):
        open_store(str(good))
    shutil.rmtree(good / "manifest_crc32c")
    with pytest.raises(KdError, match="chunk manifest .* is missing"):
        open_store(str(good))
    assert any("chunk manifest" in p for p in verify_store(str(good)).problems)


def test_edited_array_metadata_is_refused(good):
    meta = json.loads((good / "topk_logprobs" / "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == "transpose"
    meta["codecs"][0]["configuration"]["order"] = [1, 0, 2]  # decodes, but scrambled
    (good / "topk_logprobs" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(KdError, match="metadata of array topk_logprobs"):
        open_store(str(good))
    assert any(p.startswith("array topk_logprobs: its metadata") for p in verify_store(str(good)).problems)


def test_finalize_refuses_a_truncated_chunk_and_resume_writes_it_again(tmp_path):
    rows = synthetic(N)
    path = tmp_path / "s.zarr"

    def writer():
        return StoreWriter(str(path), num_examples=N, seq_len=L, k=K, vocab_size=V,
                           attrs=ATTRS, chunk_rows=R)

    w = writer()
    for c in range(3):
        w.write_chunk(c, {k: v[c * R : (c + 1) * R] for k, v in rows.items()})
    target = path / "topk_index" / "c" / "1" / "0" / "0"
    target.write_bytes(target.read_bytes()[:-10])  # a copy cut short, its marker still there
    with pytest.raises(KdError, match=r"1 chunk\(s\) fail their check: topk_index chunk 1 \(rows 4:8\) "
                                      r"\(stored and computed checksum do not match"):
        finalize_store(str(path))
    assert not zarr.open_group(str(path), mode="r").attrs["complete"]
    (path / "doc_index" / "c" / "2").unlink()  # lost since
    again = writer()  # a resume: the damaged chunks are not kept, their markers are removed
    assert again.resumed == {0}
    assert sorted(p.name for p in (path / "chunk_done" / "c").iterdir()) == ["0"]
    for c in (1, 2):
        again.write_chunk(c, {k: v[c * R : (c + 1) * R] for k, v in rows.items()})
    again.finalize()
    assert verify_store(str(path)).ok
    write(tmp_path / "whole.zarr", rows)
    got, want = open_store(str(path))[0:N], open_store(str(tmp_path / "whole.zarr"))[0:N]
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], key)
