"""store_stats and `kdstream store stats` against numpy computed on the rows that were written."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.fixtures import topk_rows, write_rows
from kdstream.cli.store import store as store_cli
from kdstream.errors import KdError
from kdstream.storage.stats import store_stats

L, K, V = 16, 4, 300


def synthetic(n, seed=0):
    """A peaked softmax (so the top-k mass varies widely); half the targets the teacher's argmax."""
    return topk_rows(n, L, K, V, seed=seed, sharpness=3.0, argmax_share=0.5)


def write(path, rows, chunk_rows=4, finalize=True):
    write_rows(path, rows, vocab=V, chunk_rows=chunk_rows, finalize=finalize)


def expected(rows, n_rows):
    mass = np.exp(rows["topk_logprobs"][:n_rows].astype(np.float64)).sum(-1)  # (n_rows, L-1)
    return {
        "topk_mass_mean": mass.mean(),
        "topk_mass_p10": np.quantile(mass, 0.10, method="inverted_cdf"),
        "tail_mass_mean": 1.0 - mass.mean(),
        "target_in_topk": (rows["target_rank"][:n_rows] <= K).mean(),
        "mean_target_nll": -rows["target_logprob"][:n_rows].astype(np.float64).mean(),
    }


def files_bytes(root) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(root) for f in names)


@pytest.fixture
def rows_and_store(tmp_path):
    rows = synthetic(10)
    write(tmp_path / "s.zarr", rows)  # 10 rows in chunks of 4: 0:4, 4:8, 8:10
    return rows, tmp_path / "s.zarr"


def test_stats_match_numpy(rows_and_store):
    rows, path = rows_and_store
    s = store_stats(str(path))
    want = expected(rows, 10)
    assert 0.05 < want["target_in_topk"] < 0.95  # the synthetic data exercises both sides
    # top-k mass: the decoded top-k are shifted to the teacher's mass, to a factor exp(±shift_scale / 2)
    e = json.loads((path / "zarr.json").read_text())["attributes"]["encoding"]
    mass_rel = np.expm1(e["shift_scale"] / 2) + 1e-6
    for key in ("topk_mass_mean", "tail_mass_mean"):
        assert s[key] == pytest.approx(want[key], rel=0, abs=mass_rel), key
    assert s["target_in_topk"] == pytest.approx(want["target_in_topk"], rel=1e-9, abs=1e-12)
    assert s["mean_target_nll"] == pytest.approx(want["mean_target_nll"], rel=0, abs=e["target_max_abs_error"])
    assert s["topk_mass_p10"] == pytest.approx(want["topk_mass_p10"], abs=2e-5)  # histogram bin width 1.5e-5
    assert s["tokens"] == 10 * L and s["rows_read"] == 10 and s["positions_read"] == 10 * (L - 1)
    # sizes: every file of the store, and each array's files
    assert s["bytes_on_disk"] == files_bytes(path) > 0
    assert s["bytes_per_token"] == s["bytes_on_disk"] / s["tokens"] > 0
    for name, size in s["array_bytes"].items():
        assert size == files_bytes(path / name) > 0, name
    assert s["bytes_on_disk"] == sum(s["array_bytes"].values()) + (path / "zarr.json").stat().st_size


def test_sample_rows_reads_only_the_first_rows(rows_and_store):
    rows, path = rows_and_store
    s = store_stats(str(path), sample_rows=5)  # a whole chunk and one row of the next
    assert s["rows_read"] == 5 and s["positions_read"] == 5 * (L - 1)
    assert s["topk_mass_mean"] == pytest.approx(expected(rows, 5)["topk_mass_mean"], rel=1e-5)
    assert s["mean_target_nll"] == pytest.approx(expected(rows, 5)["mean_target_nll"], rel=1e-5)
    assert s["tokens"] == 10 * L  # sizes are always about the whole store
    assert store_stats(str(path), sample_rows=1000)["rows_read"] == 10


def test_stats_refuse_an_incomplete_store(tmp_path):
    write(tmp_path / "s.zarr", synthetic(10), finalize=False)
    with pytest.raises(KdError, match="incomplete"):
        store_stats(str(tmp_path / "s.zarr"))


def test_cli_stats_text_and_json(rows_and_store):
    rows, path = rows_and_store
    runner = CliRunner()
    as_json = runner.invoke(store_cli, ["stats", str(path), "--json", "--sample-rows", "8"])
    assert as_json.exit_code == 0, as_json.output
    s = json.loads(as_json.output)
    assert s["rows_read"] == 8
    assert s["target_in_topk"] == pytest.approx(expected(rows, 8)["target_in_topk"])
    text = runner.invoke(store_cli, ["stats", str(path)])
    assert text.exit_code == 0, text.output
    assert f"bytes per token:  {s['bytes_per_token']:.2f}" in text.output
    assert "top-k mass:       mean" in text.output and "topk_logprobs:" in text.output
    bad = runner.invoke(store_cli, ["stats", str(path), "--sample-rows", "0"])
    assert bad.exit_code == 2  # click's usage error
