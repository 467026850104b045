"""`precompute-logits --top-p / --budget` end to end: option errors, stores, verify, stats, distill."""
import json

import numpy as np
import pytest

from helpers import TOP_K, last_json, losses, one_line_error, precompute_args, run_cli
from kdstream.storage import open_store
from kdstream.storage.selection import pad_mask

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("extra,words", [
    (("--top-p", 0), "--top-p 0.0 is outside (0, 1]"),
    (("--top-p", 1.5), "--top-p 1.5 is outside (0, 1]"),
    (("--budget", TOP_K + 1), f"is above --top-k {TOP_K}"),
    (("--top-p", 0.9, "--budget", 4), "pass one of them"),
    (("--budget", 2, "--min-k", 3), "below --min-k 3"),
    (("--min-k", 2), "--min-k is for --top-p / --budget"),
    (("--top-p", 0.9, "--targets", "sampled"), "drop them with --targets sampled"),
])
def test_bad_selection_options_are_one_line_errors(tmp_path, teacher_dir, corpus_file, extra, words):
    proc = run_cli(*precompute_args(teacher_dir, corpus_file, tmp_path / "s.zarr", *extra), check=False)
    assert words in one_line_error(proc)
    assert not (tmp_path / "s.zarr").exists()


def _second_args(teacher_dir, second_store, out, *extra):
    """The precompute of the ``second_store`` fixture (--backend hf, 8 examples, chunks of 3) with ``extra``."""
    return precompute_args(teacher_dir, second_store.parent / "reversed.jsonl", out, "--max-examples", 8,
                           "--chunk-rows", 3, "--backend", "hf", *extra)


def test_top_p_one_reads_as_the_fixed_store(tmp_path, teacher_dir, second_store):
    """--top-p 1.0: the top-8 of a 512-token vocabulary never hold all the mass, so every row is at
    full length, and the ragged store decodes to exactly the fixed store's values."""
    out = tmp_path / "p1.zarr"
    run_cli(*_second_args(teacher_dir, second_store, out, "--top-p", 1.0))
    ragged, fixed = open_store(str(out)), open_store(str(second_store))
    assert ragged.attrs["selection"] == {"kind": "top_p", "p": 1.0, "min_k": 1, "max_k": TOP_K}
    assert ragged.format_version == 6 and fixed.format_version == 4
    a, b = ragged[:], fixed[:]
    for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_budget_store_gives_each_chunk_its_largest_probabilities(tmp_path, teacher_dir, second_store):
    """--budget 3: 3 entries per position in each chunk (up to ties), and apart from rows held at
    --top-k or --min-k no row keeps an entry smaller than one dropped from another row of its chunk
    (the dropped ones read from the fixed store of the same teacher pass, to the encoding's error)."""
    out = tmp_path / "b.zarr"
    run_cli(*_second_args(teacher_dir, second_store, out, "--budget", 3))
    store, fixed = open_store(str(out)), open_store(str(second_store))
    assert store.attrs["selection"] == {"kind": "budget", "budget": 3.0, "min_k": 1, "max_k": TOP_K}
    got, full = store.read(0, 8, ("topk_ids", "topk_len")), fixed.read(0, 8, ("topk_ids", "topk_logprobs"))
    n, err = got["topk_len"], 2 * fixed.encoding["max_abs_error"]
    assert n.min() >= 1 and n.max() <= TOP_K and len(np.unique(n)) > 2
    for rows in (slice(0, 3), slice(3, 6), slice(6, 8)):  # the chunks
        nc, lp = n[rows].ravel(), full["topk_logprobs"][rows].reshape(-1, TOP_K)  # (P,), (P, K)
        assert 3 * len(nc) <= nc.sum() <= 3 * len(nc) + 4  # up to ties at the threshold
        pad = pad_mask(nc, TOP_K)
        kept = np.where(~pad & (nc > 1)[:, None], lp, np.inf).min()
        dropped = np.where(pad & (nc < TOP_K)[:, None], lp, -np.inf).max()
        assert kept >= dropped - err
        ids = got["topk_ids"][rows].reshape(-1, TOP_K)
        np.testing.assert_array_equal(ids[~pad], full["topk_ids"][rows].reshape(-1, TOP_K)[~pad])
        assert (ids[pad] == 0).all()


@pytest.fixture(scope="module")
def top_p_store(tmp_path_factory, teacher_dir, corpus_file):
    out = tmp_path_factory.mktemp("ragged") / "top_p.zarr"
    summary = last_json(run_cli(*precompute_args(teacher_dir, corpus_file, out, "--backend", "hf",
                                                 "--top-p", 0.5, "--min-k", 2)).stdout)
    assert summary["complete"] is True
    return out


def test_top_p_store_verifies_and_reports_entries(top_p_store):
    assert "ok" in run_cli("store", "verify", top_p_store).stdout.lower()
    stats = json.loads(run_cli("store", "stats", top_p_store, "--json").stdout)
    n = open_store(str(top_p_store)).read(0, 24, ("topk_len",))["topk_len"]
    assert stats["entries_mean"] == pytest.approx(n.mean()) and 2 <= stats["entries_p10"] <= stats["entries_p90"] <= TOP_K
    assert stats["entries_mean"] < TOP_K and len(np.unique(n)) > 2, np.bincount(n.ravel())
    text = run_cli("store", "stats", top_p_store).stdout
    line = next(line for line in text.splitlines() if line.startswith("entries/position:"))
    assert f"mean {n.mean():.2f}" in line and "top-p 0.5, 2..8 entries" in line


def test_distill_from_a_ragged_store(tmp_path, top_p_store, student_init_dir):
    run_cli("distill", "--logits-store", top_p_store, "--model", student_init_dir, "--epochs", 1,
            "--batch-size", 8, "--out", tmp_path / "run")
    got = losses(tmp_path / "run")
    assert len(got) >= 2 and all(np.isfinite(got))
