"""Store integrity end to end through the real commands: a lost chunk, a chunk swapped in or a store
rewritten under its reader, hand-edited attributes, and a resume over a truncated chunk already
marked done. Each breaks a copy of the session store (tests/conftest.py: 24 examples, one chunk)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_distill_faults import distill_args

from helpers import make_gpt_neox, precompute_args, run_cli
from kdstream.errors import KdError
from kdstream.storage import StoreWriter, open_store
from kdstream.storage.verify import verify_store

EXTRACT = ("--method", "store", "--prefix-len", "16", "--suffix-len", "16")


@pytest.fixture
def store(teacher_store, tmp_path) -> Path:
    path = tmp_path / "teacher.zarr"
    shutil.copytree(teacher_store, path)
    return path


def attrs_of(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]


def set_attrs(path: Path, attrs: dict) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"] = attrs
    (path / "zarr.json").write_text(json.dumps(meta))


def make_partial(path: Path) -> None:
    """The store as a killed precompute leaves it after its (only) chunk was written and marked:
    complete false, no integrity record or manifest yet."""
    attrs = attrs_of(path)
    for key in ("integrity", "manifest", "precompute_seconds"):
        attrs.pop(key, None)
    set_attrs(path, {**attrs, "complete": False})
    shutil.rmtree(path / "manifest_crc32c")


def refused(proc, error_line, *parts: str) -> str:
    line = error_line(proc)
    for part in parts:
        assert part in line, line
    return line


def test_a_missing_chunk_stops_every_reader(store, tmp_path, digest, error_line):
    """Issue 14 case 4: a lost chunk file read as zeros (suffix ids 0, top-k mass 0.90)."""
    (store / "topk_logprobs" / "c" / "0" / "0" / "0").unlink()
    before = digest(store)
    refused(run_cli("store", "stats", store, check=False), error_line,
            "topk_logprobs chunk 0 (rows 0:24, file topk_logprobs/c/0/0/0) is missing")
    out = tmp_path / "eval"
    refused(run_cli("extract-eval", "--logits-store", store, *EXTRACT, "--out", out, check=False), error_line,
            "topk_logprobs chunk 0", "is missing")
    assert not (out / "summary.json").exists()
    (store / "input_ids" / "c" / "0" / "0").unlink()  # the suffix ids themselves
    before = digest(store)
    refused(run_cli("extract-eval", "--logits-store", store, *EXTRACT, "--out", out, check=False), error_line,
            "input_ids chunk 0", "is missing")
    assert digest(store) == before and not (out / "summary.json").exists()


def swap_in_chunk(store: Path, teacher_store: Path, tmp_path: Path) -> None:
    """Replace the store's topk_logprobs chunk with one of another store (the same rows, logprobs
    0.25 lower): an object intact in itself, but not the store's."""
    rows = open_store(str(teacher_store))[0:24]
    a = attrs_of(teacher_store)
    other = StoreWriter(str(tmp_path / "other.zarr"), num_examples=24, seq_len=a["seq_len"], k=a["k"],
                        vocab_size=a["vocab_size"], chunk_rows=a["chunk_rows"], attrs={})
    other.append({**{k: rows[k] for k in ("input_ids", "example_id", "doc_index", "topk_ids", "target_rank")},
                  "topk_logprobs": rows["topk_logprobs"] - 0.25, "target_logprob": rows["target_logprob"] - 0.25})
    other.finalize()
    key = Path("topk_logprobs/c/0/0/0")
    shutil.copy(tmp_path / "other.zarr" / key, store / key)


def test_a_chunk_swapped_in_from_another_store_is_refused(store, teacher_store, tmp_path, digest, error_line):
    """Issue 14 case 5 (the cheap form): a chunk object intact in itself, but not the store's."""
    swap_in_chunk(store, teacher_store, tmp_path)
    before = digest(store)
    refused(run_cli("store", "stats", store, check=False), error_line,
            "topk_logprobs chunk 0", "differs from its manifest")
    verify = run_cli("store", "verify", store, check=False)
    assert verify.returncode == 1 and "corrupt: topk_logprobs chunk 0 (rows 0:24): differs from the store's manifest" \
        in verify.stdout, verify.stdout
    assert digest(store) == before


@pytest.mark.slow
def test_a_store_rewritten_under_an_open_reader_stops_it(store, tokenizer, corpus_file, tmp_path, digest):
    """Issue 14 case 5: `precompute-logits --overwrite` rewrites the store a reader (distill) has open."""
    reader = open_store(str(store))
    reader[0:24]
    other_teacher = make_gpt_neox(tmp_path / "teacher2", tokenizer, seed=2)
    run_cli(*precompute_args(other_teacher, corpus_file, store, "--overwrite"))
    with pytest.raises(KdError, match=r"changed since it was finalized or opened: \w+ chunk 0 .* differs from its "
                                      r"manifest"):
        reader[0:24]
    with pytest.raises(KdError, match="not the store this run started with"):
        open_store(str(store), identity=reader.identity)
    assert open_store(str(store)).identity != reader.identity


def test_hand_edited_attributes_are_refused(store, tmp_path, digest, error_line):
    """Issue 14 case 8: a doubled encoding.scale passed verify and trained."""
    attrs = attrs_of(store)
    set_attrs(store, {**attrs, "encoding": {**attrs["encoding"], "scale": attrs["encoding"]["scale"] * 2}})
    before = digest(store)
    verify = run_cli("store", "verify", store, check=False)
    assert verify.returncode == 1 and "problem: attributes do not match their checksum" in verify.stdout, verify.stdout
    refused(run_cli("store", "stats", store, check=False), error_line, "attributes do not match their checksum")
    # no dataset card for it either (and no README.md written into it)
    refused(run_cli("store", "card", store, check=False), error_line, "attributes do not match their checksum")
    info = run_cli("store", "info", store)  # still shows what the store claims, and why it has no identity
    assert "identity: none: store" in info.stdout and "attributes do not match" in info.stdout
    assert digest(store) == before


def test_a_store_edited_to_an_older_format_version_is_still_checked(store, teacher_store, tmp_path, digest,
                                                                    error_line):
    """Issue 36 case 1: `format_version` 4 → 3 turned every integrity check off (verify said intact,
    stats and extract-eval read a swapped chunk). The record it carries is checked whatever version
    it claims, and a claim older than that record is refused; so is a record stripped down to a part."""
    swap_in_chunk(store, teacher_store, tmp_path)
    set_attrs(store, {**attrs_of(store), "format_version": 3})
    before = digest(store)
    verify = run_cli("store", "verify", store, check=False)
    assert verify.returncode == 1, verify.stdout
    for part in ("claims format version 3 but carries an integrity attribute", "attributes do not match their checksum",
                 "corrupt: topk_logprobs chunk 0 (rows 0:24): differs from the store's manifest"):
        assert part in verify.stdout, verify.stdout
    claims = "claims format version 3 but carries"
    refused(run_cli("store", "stats", store, check=False), error_line, claims, "format_version was edited")
    out = tmp_path / "eval"
    refused(run_cli("extract-eval", "--logits-store", store, *EXTRACT, "--out", out, check=False), error_line, claims)
    info = run_cli("store", "info", store)
    assert "identity: none: store" in info.stdout and claims in info.stdout, info.stdout
    assert digest(store) == before and not (out / "summary.json").exists()
    # the record taken apart: each part left behind still gives the downgrade away
    attrs = attrs_of(store)
    attrs.pop("integrity")
    set_attrs(store, attrs)
    refused(run_cli("store", "stats", store, check=False), error_line, claims, "manifest.arrays")
    for key in ("arrays", "layout"):
        attrs["manifest"].pop(key)
    set_attrs(store, attrs)
    refused(run_cli("store", "stats", store, check=False), error_line, claims, "manifest_crc32c array")
    assert "manifest_crc32c array" in run_cli("store", "verify", store, check=False).stdout


def test_a_partial_store_edited_to_complete_is_refused(store, tmp_path, digest, error_line):
    """Issue 14 case 8: `complete: true` on a partial store was read by stats and extract-eval."""
    make_partial(store)
    set_attrs(store, {**attrs_of(store), "complete": True})
    before = digest(store)
    refused(run_cli("store", "stats", store, check=False), error_line, "attributes do not match their checksum")
    out = tmp_path / "eval"
    refused(run_cli("extract-eval", "--logits-store", store, *EXTRACT, "--out", out, check=False), error_line,
            "attributes do not match their checksum")
    assert digest(store) == before and not (out / "summary.json").exists()


def forge(store: Path, array: str, index: tuple, value: int) -> None:
    """Set one element of ``array`` and finalize the store again: a forgery whose crc32c, manifest
    and attribute checksums are all recomputed, so that only the values can give it away."""
    g = zarr.open_group(str(store), mode="r+")
    arr = g[array].with_config({"write_empty_chunks": True})
    data = arr[...]
    data[index] = value
    arr[...] = data
    make_partial(store)
    run_cli("store", "finalize", store)


@pytest.mark.parametrize("array", ["input_ids", "id_table", "topk_index"])
def test_a_forged_token_id_past_the_vocabulary_is_refused(store, student_init_dir, tmp_path, array, digest,
                                                          error_line):
    """Issue 36 case 6: a store forged consistently (checksums recomputed) with a token id past the
    vocabulary passed `verify` and `stats` and crashed `distill` with a traceback."""
    vocab = attrs_of(store)["vocab_size"]
    forge(store, array, (0, 3) if array != "topk_index" else (0, 3, 0), vocab + 5)
    before = digest(store)
    verify = run_cli("store", "verify", store, check=False)
    assert verify.returncode == 1, verify.stdout
    assert f"problem: {array} chunk 0 (rows 0:24): " in verify.stdout and f"{vocab + 5} outside 0..{vocab - 1}" \
        in verify.stdout, verify.stdout
    said = "index past its chunk's id table" if array == "topk_index" else f"holds token id {vocab + 5}, outside"
    with pytest.raises(KdError, match=f"store {store}: {array} .*{said}"):
        open_store(str(store))[0:24]
    out = tmp_path / "run"
    refused(run_cli(*distill_args(store, student_init_dir, out), check=False), error_line, "is damaged", array)
    # without the verify pass, the reader itself refuses the rows
    refused(run_cli(*distill_args(store, student_init_dir, out, "--no-verify-store"), check=False), error_line,
            array, said)
    assert digest(store) == before and not out.exists()


@pytest.mark.slow
def test_resume_over_a_truncated_chunk_marked_done_rewrites_it(store, teacher_store, teacher_dir, corpus_file):
    """Issue 14 case 9: the resumed store ended `complete: true` but corrupt."""
    make_partial(store)
    target = store / "topk_index" / "c" / "0" / "0" / "0"
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])  # a copy cut short
    run_cli(*precompute_args(teacher_dir, corpus_file, store))  # the same command: a resume
    assert attrs_of(store)["complete"] is True
    assert verify_store(str(store)).ok
    assert target.read_bytes() == (teacher_store / "topk_index" / "c" / "0" / "0" / "0").read_bytes()
    got, want = open_store(str(store))[0:24], open_store(str(teacher_store))[0:24]
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], key)
