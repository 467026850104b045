"""model_fingerprint hashes the whole weight files, through a per-user JSON cache."""
import json
import os

import pytest

from kdstream.model_files import fingerprint_cache_path, model_fingerprint


@pytest.fixture
def model(tmp_path, monkeypatch):
    """A model directory with one 3 MiB weight file, and a cache of our own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "gpt_neox"}')
    (d / "model.safetensors").write_bytes(os.urandom(3 << 20))
    return d


def flip(path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_a_byte_changed_in_the_middle_changes_the_fingerprint(model):
    before = model_fingerprint(model)["weights_fingerprint"]
    assert model_fingerprint(model)["weights_fingerprint"] == before  # from the cache: the same
    flip(model / "model.safetensors", (3 << 20) // 2)  # 0.5 MiB away from either end's first/last MiB
    assert model_fingerprint(model)["weights_fingerprint"] != before


def test_the_cache_is_json_keyed_by_path_size_and_times_and_is_used(model):
    model_fingerprint(model)
    cache = json.loads(fingerprint_cache_path().read_text())
    entry = cache[str((model / "model.safetensors").resolve())]
    st = (model / "model.safetensors").stat()
    assert (entry["size"], entry["mtime_ns"], entry["ctime_ns"]) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    first = model_fingerprint(model)["weights_fingerprint"]
    # The cache is what a rerun reads: a different digest there (same stamps) changes the result...
    entry["sha256"] = "0" * 64
    fingerprint_cache_path().write_text(json.dumps(cache))
    assert model_fingerprint(model)["weights_fingerprint"] != first
    # ...until the file's stamps change: then the file is hashed again.
    os.utime(model / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert model_fingerprint(model)["weights_fingerprint"] == first


@pytest.mark.parametrize("damage", [b"\x80\x04garbage", b"[1, 2]", b'{"x": {"size": "no"}}', b""])
def test_a_damaged_cache_is_ignored_and_rewritten(model, damage):
    first = model_fingerprint(model)["weights_fingerprint"]
    fingerprint_cache_path().write_bytes(damage)
    assert model_fingerprint(model)["weights_fingerprint"] == first
    cache = json.loads(fingerprint_cache_path().read_text())
    assert cache[str((model / "model.safetensors").resolve())]["sha256"]
