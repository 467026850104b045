"""Stores over fsspec URLs: written to S3 (a local moto server), read over plain HTTP and from
fsspec's in-process ``memory://`` filesystem (the path any other fsspec filesystem, ``hf://``
among them, takes through zarr's FsspecStore).

Everything listens on 127.0.0.1 only and is stopped when its test ends. The S3 endpoint reaches
s3fs/botocore through AWS_ENDPOINT_URL, so kdstream's API needs no storage options.
"""
import logging
import time
import uuid
import warnings

import numpy as np
import pytest

from benchmarks.fixtures import topk_rows
from kdstream.storage import StoreWriter, open_store
from kdstream.storage.stats import store_stats
from kdstream.storage.verify import verify_store

pytestmark = pytest.mark.timeout(180)


def synthetic(n, L, k, seed=0):
    """Valid rows, cheap at any size: a real top-k (mass < 1) over a small vocabulary."""
    return topk_rows(n, L, k, 64, seed=seed)


def write(url, rows, chunk_rows):
    n, L = rows["input_ids"].shape
    k = rows["topk_ids"].shape[-1]
    w = StoreWriter(url, num_examples=n, seq_len=L, k=k, vocab_size=1000, attrs={}, chunk_rows=chunk_rows)
    w.append(rows)
    w.finalize()


def assert_same(store, rows):
    """Ids and ranks exact; logprobs within the encoding's bound (attrs["encoding"])."""
    got = store[0 : len(store)]
    bound = store.attrs["encoding"]["max_abs_error"] + 1e-6
    for key, value in rows.items():
        if key.endswith("logprob") or key.endswith("logprobs"):
            np.testing.assert_allclose(got[key], value, rtol=0, atol=bound, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """A moto S3 server on a free loopback port with bucket `bucket`; yields a boto3 client."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # Dummy credentials and no user config: nothing can reach a real account.
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")  # honoured by botocore and s3fs
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would keep an old endpoint
    client = boto3.client("s3")
    client.create_bucket(Bucket="bucket")
    try:
        yield client
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def test_write_to_s3_read_back_and_verify(s3):
    rows = synthetic(10, L=16, k=4)
    write("s3://bucket/store.zarr", rows, chunk_rows=4)
    store = open_store("s3://bucket/store.zarr")
    assert store.attrs["complete"] is True and len(store) == 10
    assert_same(store, rows)
    report = verify_store("s3://bucket/store.zarr")
    assert report.ok and report.chunks_checked == 27, report  # 3 chunks of 9 arrays
    assert store_stats("s3://bucket/store.zarr")["bytes_on_disk"] > 0  # du works by listing the prefix

    # A flipped byte in an object is named just as on disk.
    key = "store.zarr/topk_logprobs/c/1/0/0"
    data = bytearray(s3.get_object(Bucket="bucket", Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.put_object(Bucket="bucket", Key=key, Body=bytes(data))
    report = verify_store("s3://bucket/store.zarr")
    assert not report.ok and len(report.corrupt) == 1
    assert report.corrupt[0].startswith("topk_logprobs chunk 1 (rows 4:8): crc32c checksum mismatch")


def read_rate(store, repeats=3) -> float:
    """Tokens per second reading the whole store, chunk by chunk, every array (best of repeats)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for a in range(0, len(store), store.chunk_rows):
            store.read(a, min(a + store.chunk_rows, len(store)))
        best = min(best, time.perf_counter() - start)
    return len(store) * store.seq_len / best


def test_read_over_http_equals_local(http_root, capsys):
    root, base = http_root
    rows = synthetic(256, L=128, k=16)
    write(str(root / "store.zarr"), rows, chunk_rows=32)  # 8 chunks per array
    remote = open_store(f"{base}/store.zarr")  # zarr reads zarr.json and chunk keys directly: no listing
    local = open_store(str(root / "store.zarr"))
    assert remote.attrs == local.attrs
    assert_same(remote, rows)
    assert verify_store(f"{base}/store.zarr").ok

    http_rate, local_rate = read_rate(remote), read_rate(local)
    with capsys.disabled():  # a measurement to look at, not a pass/fail criterion
        print(f"\nread rate, 256 x 128 tokens, k=16: HTTP {http_rate:,.0f} tok/s, "
              f"local disk {local_rate:,.0f} tok/s ({local_rate / http_rate:.1f}x)")


@pytest.mark.parametrize("http_root", [False], indirect=True)
def test_stats_over_http_without_listings(http_root):
    root, base = http_root
    rows = synthetic(12, L=16, k=4)
    write(str(root / "store.zarr"), rows, chunk_rows=4)
    remote, local = store_stats(f"{base}/store.zarr"), store_stats(str(root / "store.zarr"))
    assert remote["bytes_on_disk"] is None and remote["bytes_per_token"] is None  # unknown, not 0
    assert local["bytes_on_disk"] > 0
    for key in ("topk_mass_mean", "topk_mass_p10", "target_in_topk", "mean_target_nll", "positions_read"):
        assert remote[key] == local[key], key


def test_read_from_fsspec_memory_filesystem_equals_local(tmp_path):
    """A store copied into memory:// reads as the local one: same arrays, same identity, verifies.

    memory:// is a synchronous fsspec filesystem: zarr's FsspecStore wraps it in fsspec's
    AsyncFileSystemWrapper, as it would any other synchronous one."""
    import fsspec

    rows = synthetic(10, L=16, k=4)
    local_path = tmp_path / "store.zarr"
    write(str(local_path), rows, chunk_rows=4)
    fs = fsspec.filesystem("memory")
    root = f"/kdstream-test-{uuid.uuid4().hex}"  # the memory filesystem is one per process: a fresh name
    fs.put(str(local_path), f"{root}/store.zarr", recursive=True)
    url = f"memory://{root}/store.zarr"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no zarr or fsspec warning on the way either
            remote, local = open_store(url), open_store(str(local_path))
            assert remote.identity == local.identity is not None
            got, want = remote[0 : len(remote)], local[0 : len(local)]
            assert got.keys() == want.keys()
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=key)
            assert verify_store(url).ok
            assert store_stats(url)["bytes_on_disk"] == store_stats(str(local_path))["bytes_on_disk"] > 0
    finally:
        fs.rm(root, recursive=True)
