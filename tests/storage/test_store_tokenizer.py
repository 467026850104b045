"""The store carries its teacher's tokenizer (storage/tokenizer_files.py): written by precompute,
checked like the logits, exported by `kdstream store tokenizer STORE OUT`; stores written before
it still read everywhere."""
import json
import shutil
import uuid
from pathlib import Path

import pytest
import zarr

from benchmarks.fixtures import topk_rows
from helpers import run_cli, without_tokenizer
from kdstream.errors import KdError
from kdstream.storage import StoreWriter, open_store, open_stores
from kdstream.storage import tokenizer_files as tf
from kdstream.storage.verify import verify_store
from kdstream.text.tokenizers import load_tokenizer, tokenizer_fingerprint

TEXT = "The quick brown fox jumps over the lazy dog, twice: über naïve café."


@pytest.fixture
def store(teacher_store, tmp_path) -> Path:
    """A private copy of the session's real store (vLLM-written), to damage."""
    return shutil.copytree(teacher_store, tmp_path / "teacher.zarr")


def test_a_precomputed_store_carries_its_tokenizer_and_exports_it(teacher_store, teacher_dir, tmp_path):
    from transformers import AutoTokenizer

    original = load_tokenizer(teacher_dir)
    attrs = open_store(str(teacher_store)).attrs
    names = [f["name"] for f in attrs["tokenizer"]["files"]]
    assert "tokenizer.json" in names and not any(n.endswith((".py", ".pkl", ".bin", ".safetensors")) for n in names)
    assert set(names) <= tf.ALLOWED
    info = json.loads(run_cli("store", "info", teacher_store, "--json").stdout)
    assert info["tokenizer_files"] == names
    assert attrs["format_version"] == 4  # no version bump: older readers ignore the group

    out = tmp_path / "exported" / "tok"  # its parent does not exist yet either
    proc = run_cli("store", "tokenizer", teacher_store, out)
    assert proc.stdout.strip() == f"wrote {out}: {', '.join(sorted(names))}"
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert [p.name for p in out.parent.iterdir()] == ["tok"]  # no temporary sibling left behind
    for f in attrs["tokenizer"]["files"]:
        assert (out / f["name"]).read_bytes() == (teacher_dir / f["name"]).read_bytes()
    # docs/store-format.md, "The tokenizer": the same bytes with plain zarr
    g = zarr.open_group(str(teacher_store), mode="r")
    files = {f["name"]: g[f"tokenizer/{f['name']}"][:].tobytes() for f in g.attrs["tokenizer"].get("files", [])}
    assert files == {name: (out / name).read_bytes() for name in names}

    exported = AutoTokenizer.from_pretrained(str(out))
    assert exported(TEXT)["input_ids"] == original(TEXT)["input_ids"]
    assert tokenizer_fingerprint(exported) == tokenizer_fingerprint(original) == {
        k: attrs["tokenizer"][k] for k in ("sha256", "vocab_size")}
    assert run_cli("store", "verify", teacher_store).stdout.startswith("ok: ")


def test_export_refuses_an_out_that_is_not_a_new_or_empty_folder(teacher_store, tmp_path, digest, error_line):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("mine\n")
    for out in (full, a_file):
        before = digest(out)
        line = error_line(run_cli("store", "tokenizer", teacher_store, out, check=False))
        assert f"{out} exists and is not an empty folder" in line
        assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "full"]  # nothing written beside them
    empty = tmp_path / "empty"
    empty.mkdir()
    run_cli("store", "tokenizer", teacher_store, empty)  # an empty folder is fine
    assert (empty / "tokenizer.json").is_file()


def test_a_damaged_tokenizer_file_is_refused(store, teacher_store, tmp_path, error_line):
    # a flipped byte in the chunk object: its crc32c fails
    chunk = store / "tokenizer" / "tokenizer.json" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    line = error_line(run_cli("store", "tokenizer", store, tmp_path / "out", check=False))
    assert f"store {store}: tokenizer file tokenizer.json" in line and "is corrupt" in line
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["teacher.zarr"]
    verify = run_cli("store", "verify", store, check=False)
    assert verify.returncode == 1
    assert "corrupt: tokenizer file tokenizer.json (tokenizer/tokenizer.json/) is corrupt" in verify.stdout
    with pytest.raises(KdError, match=f"store {store}: tokenizer file tokenizer.json"):
        tf.store_tokenizer(open_store(str(store)))
    assert len(open_store(str(store))[0:2]["input_ids"]) == 2  # the logits themselves still read

    # other bytes written through zarr (a well-formed chunk, its crc32c right): not the recorded sha256
    edited = shutil.copytree(teacher_store, tmp_path / "edited.zarr")
    tf.write_files(zarr.open_group(str(edited), mode="r+"), {"tokenizer_config.json": b"{}"})
    with pytest.raises(KdError, match=r"tokenizer file tokenizer_config.json \(tokenizer/tokenizer_config.json/\) does "
                                      r"not match its sha256"):
        tf.read_files(open_store(str(edited)))
    assert not verify_store(str(edited)).ok


def test_a_store_without_its_tokenizer_still_reads_and_says_so(teacher_store, tmp_path, error_line):
    old = without_tokenizer(teacher_store, tmp_path / "old.zarr")
    store = open_store(str(old))  # its integrity record checks out, as an older kdstream wrote it
    assert store.identity is not None and not tf.carries_tokenizer(store) and tf.store_tokenizer(store) is None
    assert verify_store(str(old)).ok
    assert json.loads(run_cli("store", "info", old, "--json").stdout)["tokenizer_files"] == []
    line = error_line(run_cli("store", "tokenizer", old, tmp_path / "out", check=False))
    assert "carries no tokenizer" in line and "teacher's own tokenizer directory" in line
    assert not (tmp_path / "out").exists()

    # a union takes the files of its first part that carries them (the parts share one tokenizer)
    union = open_stores(f"{old},{teacher_store}")
    assert tf.carries_tokenizer(union)
    assert tokenizer_fingerprint(tf.store_tokenizer(union))["sha256"] == store.attrs["tokenizer"]["sha256"]


def test_the_tokenizer_reads_over_http(teacher_store, http_root):
    root, base = http_root
    shutil.copytree(teacher_store, root / "teacher.zarr")
    remote = open_store(f"{base}/teacher.zarr")
    assert tf.read_files(remote) == tf.read_files(open_store(str(teacher_store)))
    assert tokenizer_fingerprint(tf.store_tokenizer(remote))["sha256"] == remote.attrs["tokenizer"]["sha256"]


def _rows(n, L=8, k=4, V=300):
    return topk_rows(n, L, k, V)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_finalize_refuses_a_damaged_tokenizer_file_and_a_resume_writes_it_again(teacher_dir, tmp_path, where):
    """The writer records and writes the files (any fsspec URL); finalize checks them; a resumed
    writer rewrites a damaged one."""
    import fsspec

    fp = tokenizer_fingerprint(load_tokenizer(teacher_dir))
    files, why = tf.collect(teacher_dir, fp["sha256"])
    assert why is None and "tokenizer.json" in files
    url = str(tmp_path / "s.zarr") if where == "local" else f"memory:///kdstream-test-{uuid.uuid4().hex}/s.zarr"
    rows = _rows(8)

    def writer():
        return StoreWriter(url, num_examples=8, seq_len=8, k=4, vocab_size=300, attrs={"tokenizer": fp},
                           chunk_rows=4, tokenizer_files=files)

    try:
        w = writer()
        for c in (0, 1):
            w.write_chunk(c, {key: v[4 * c: 4 * (c + 1)] for key, v in rows.items()})
        tf.write_files(zarr.open_group(url, mode="r+"), {"tokenizer.json": b"not the file"})  # damaged meanwhile
        with pytest.raises(KdError, match="tokenizer file tokenizer.json .* does not match its sha256.*rerun "
                                          "precompute-logits"):
            w.finalize()
        resumed = writer()  # same options: resumes, and writes the tokenizer file again
        assert resumed.resumed == {0, 1}
        resumed.finalize()
        store = open_store(url)
        assert tf.read_files(store) == files and verify_store(url).ok
        assert tokenizer_fingerprint(tf.store_tokenizer(store)) == fp
    finally:
        if where == "memory":
            fsspec.filesystem("memory").rm(url.removeprefix("memory://").rsplit("/", 1)[0], recursive=True)


def test_only_allow_listed_files_are_stored_and_no_code_runs(teacher_dir, tmp_path):
    """A tokenizer folder with code and a pickle beside its files, and an auto_map naming that code:
    only the plain-text files are collected, and loading them runs nothing."""
    d = shutil.copytree(teacher_dir, tmp_path / "tok", ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "ran"
    (d / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (d / "evil.pkl").write_bytes(b"\x80\x04K\x01.")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(
        {**cfg, "auto_map": {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}}))
    fp = tokenizer_fingerprint(load_tokenizer(d))["sha256"]
    files, why = tf.collect(d, fp)
    assert why is None and set(files) <= tf.ALLOWED and "tokenization_evil.py" not in files
    assert "evil.pkl" not in files and not marker.exists()
    # a folder whose files load to another tokenizer: the store is written without them, and says why
    files, why = tf.collect(d, "0" * 64)
    assert files == {} and "load to another tokenizer" in why


def test_a_second_worker_writes_a_tokenizer_file_beside_the_first_and_deletes_nothing(tmp_path):
    """Parallel workers of one store write the same files. One that finds the other's array there,
    its chunk not written yet, writes the same bytes beside it: it never deletes the array (and
    with it the first worker's file in flight)."""
    url = tmp_path / "s.zarr"
    data = b'{"model_max_length": 128}'
    tf.write_files(zarr.open_group(str(url), mode="w"), {"tokenizer_config.json": data})
    array_dir = url / tf.GROUP / "tokenizer_config.json"
    for chunk in (array_dir / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()  # the first worker created the array and is still writing its chunk
    in_flight = array_dir / "zarr.0123abcd.partial"  # its atomic write's temporary file
    in_flight.write_bytes(b"")
    tf.write_files(zarr.open_group(str(url), mode="r+"), {"tokenizer_config.json": data})
    assert in_flight.exists()
    sub = zarr.open_group(str(url), mode="r")[tf.GROUP]
    assert tf._read_array(sub, "tokenizer_config.json", len(data)) == data
