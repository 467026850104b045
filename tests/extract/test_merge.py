"""extract-eval --method store (no model), prefix sweeps, and sharded runs joined by `eval merge`."""
import json

import pyarrow.parquet as pq
import pytest

from helpers import NUM_EXAMPLES, run_cli, store_eval_shards

COMMON = ("--method", "store", "--prefix-len", "16,24", "--suffix-len", 16)


@pytest.fixture(scope="module")
def store_eval(tmp_path_factory, teacher_store):
    out = tmp_path_factory.mktemp("store_eval") / "single"
    run_cli("extract-eval", "--logits-store", teacher_store, *COMMON, "--out", out)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory, teacher_store):
    return store_eval_shards(teacher_store, tmp_path_factory.mktemp("shards"), 3, *COMMON)


def test_store_method_and_prefix_sweep_files(store_eval, teacher_store):
    from kdstream.storage import open_store

    summary = json.loads((store_eval / "summary.json").read_text())
    results = pq.read_table(store_eval / "results.parquet").to_pandas()
    sweep = pq.read_table(store_eval / "prefix_sweep.parquet").to_pandas()
    assert summary["method"] == "store" and summary["model"] is None and summary["prefix_len"] == 16
    assert len(results) == NUM_EXAMPLES and results["example_id"].is_unique
    assert len(sweep) == 2 * NUM_EXAMPLES and set(sweep["prefix_len"]) == {16, 24}
    assert {"example_id", "exact_match", "frac_matched", "prefix_match_len", "edit_distance", "approx_match",
            "generated_ids", "suffix_ids", "margin", "near_tie", "argmax_ids"} <= set(results.columns)
    assert results["generated_ids"].isna().all()  # generate-only columns stay empty
    assert [r["prefix_len"] for r in summary["by_prefix_len"]] == [16, 24]
    for row in summary["by_prefix_len"]:
        g = sweep[sweep["prefix_len"] == row["prefix_len"]]
        assert set(row) == {"prefix_len", "examples", "memorized", "rate"}
        assert row["examples"] == NUM_EXAMPLES and row["memorized"] == int(g["exact_match"].sum())
    # the primary rows of the sweep are results.parquet; the suffix starts right after the prefix
    prim = sweep[sweep["prefix_len"] == 16].reset_index(drop=True)
    assert (prim["prefix_match_len"] == results["prefix_match_len"]).all()
    ids = open_store(str(teacher_store))[0:NUM_EXAMPLES]["input_ids"]
    assert [list(s) for s in results["suffix_ids"]] == ids[:, 16:32].tolist()
    # hand check: matched prefix length = leading suffix positions whose teacher rank is 1
    rows = open_store(str(teacher_store))[0:NUM_EXAMPLES]
    for p, g in sweep.groupby("prefix_len"):
        ranks = rows["target_rank"][:, p - 1 : p + 15]  # row t predicts token t+1
        expect = [16 if (r == 1).all() else int((r != 1).argmax()) for r in ranks]
        assert g["prefix_match_len"].tolist() == expect
        assert g["tf_frac_matched"].tolist() == pytest.approx((ranks == 1).mean(axis=1).tolist())
    gap = rows["topk_logprobs"][0, 15, 0] - rows["topk_logprobs"][0, 15, 1]
    if results.loc[0, "prefix_match_len"] == 0:  # the margin is the first (deciding) position's gap
        assert results.loc[0, "margin"] == pytest.approx(gap)


def test_sharded_run_merges_to_the_single_run(shards, store_eval, tmp_path):
    out = tmp_path / "merged"
    run_cli("eval", "merge", *shards, "--out", out)
    single = json.loads((store_eval / "summary.json").read_text())
    merged = json.loads((out / "summary.json").read_text())
    timing = {"seconds", "seconds_by_method", "sequences_per_s", "sequences_per_s_by_method", "merged_from"}
    assert {k: v for k, v in merged.items() if k not in timing} == {k: v for k, v in single.items() if k not in timing}
    for f in ("results.parquet", "prefix_sweep.parquet"):
        assert pq.read_table(out / f).equals(pq.read_table(store_eval / f)), f
    w1 = json.loads((shards[1] / "summary.json").read_text())
    assert (w1["worker_index"], w1["num_workers"], w1["example_range"]) == (1, 3, [8, 16])


@pytest.mark.parametrize("pick,message", [((0, 2), "examples 8..15 of 24 are in no shard"),
                                          ((0, 1, 1, 2), "overlap")])
def test_merge_refuses_missing_or_overlapping_shards(shards, tmp_path, pick, message):
    proc = run_cli("eval", "merge", *[shards[i] for i in pick], "--out", tmp_path / "m", check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "m").exists()


def test_merge_refuses_shards_of_different_runs(shards, teacher_store, tmp_path):
    other = tmp_path / "other"
    run_cli("extract-eval", "--logits-store", teacher_store, "--method", "store", "--prefix-len", "16",
            "--suffix-len", 16, "--num-workers", 3, "--worker-index", 1, "--out", other)
    proc = run_cli("eval", "merge", shards[0], other, shards[2], "--out", tmp_path / "m", check=False)
    assert proc.returncode == 2 and "different options (prefix_len)" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (("--method", "store", "--dataset", "corpus.jsonl"), "--method store reads the teacher's verdicts from --logits-store"),
    (("--method", "fast", "--logits-store", "s.zarr"), "--method fast needs --model"),
    (("--method", "store", "--logits-store", "s.zarr", "--prefix-len", "16,x"), "is not a comma list of integers"),
    (("--method", "store", "--logits-store", "s.zarr", "--num-workers", 3, "--worker-index", 3), "outside 0..2"),
])
def test_extract_eval_option_errors(tmp_path, args, message):
    proc = run_cli("extract-eval", *args, "--out", tmp_path / "e", check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and message in err[0], proc.stderr
