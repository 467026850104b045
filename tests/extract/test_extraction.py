"""extract-eval on a model trained to memorize part of the store: greedy generation, the
teacher-forced fast path and the store verdict agree (except flagged near-ties), on vLLM and HF."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import NUM_EXAMPLES, levenshtein, run_cli
from kdstream.extract.metrics import match_metrics

pytestmark = pytest.mark.slow
TRAINED = 8  # examples 0..7 are trained on; the rest are excluded


@pytest.fixture(scope="module")
def memorizer(tmp_path_factory, teacher_store, student_init_dir):
    """A 1-layer student trained (CE, many epochs) on 8 of the 24 stored examples only."""
    d = tmp_path_factory.mktemp("memorizer")
    exclude = d / "exclude.txt"
    exclude.write_text("\n".join(str(i) for i in range(TRAINED, NUM_EXAMPLES)) + "\n")
    run_cli("distill", "--logits-store", teacher_store, "--model", student_init_dir, "--loss", "ce",
            "--epochs", 60, "--batch-size", 8, "--lr", "3e-3", "--warmup-ratio", 0, "--exclude", exclude,
            "--out", d / "model")
    return d / "model"


SWEEP = ("--prefix-len", "16,24", "--suffix-len", 16, "--dtype", "float32")


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, memorizer, teacher_store):
    """vLLM, generate + fast, two prefix lengths: one engine start. --features after vLLM: the HF
    scoring model cannot be built in a process that imported vLLM, so it runs in a fresh one."""
    out = tmp_path_factory.mktemp("eval") / "memorizer"
    run_cli("extract-eval", "--model", memorizer, "--logits-store", teacher_store, "--method", "both", *SWEEP,
            "--features", "--out", out)
    return out


@pytest.fixture(scope="module")
def hf_evaluation(tmp_path_factory, memorizer, teacher_store):
    out = tmp_path_factory.mktemp("eval") / "memorizer_hf"
    run_cli("extract-eval", "--model", memorizer, "--logits-store", teacher_store, "--method", "both",
            "--backend", "hf", "--batch-size", 10, *SWEEP, "--features", "--out", out)
    return out


def _sweep(d):
    return pq.read_table(d / "prefix_sweep.parquet").to_pandas().set_index(["prefix_len", "example_id"]).sort_index()


def test_summary_and_results(evaluation):
    summary = json.loads((evaluation / "summary.json").read_text())
    table = pq.read_table(evaluation / "results.parquet").to_pandas()
    assert summary["examples"] == NUM_EXAMPLES == len(table)
    assert summary["memorized"] == int(table["exact_match"].sum()) == summary["memorized_by_method"]["generate"]
    assert summary["memorized_by_method"]["fast"] == int(table["fast_exact_match"].sum())
    assert summary["rate"] == pytest.approx(summary["memorized"] / NUM_EXAMPLES)
    assert set(table.columns) >= {"example_id", "exact_match", "frac_matched", "prefix_match_len", "generated_ids",
                                  "edit_distance", "approx_match", "suffix_ids", "margin", "argmax_ids"}
    assert all(len(g) == 16 for g in table["generated_ids"])
    assert [r["prefix_len"] for r in summary["by_prefix_len"]] == [16, 24]


def test_only_trained_examples_are_memorized(evaluation):
    table = pq.read_table(evaluation / "results.parquet").to_pandas()
    memorized = set(table.loc[table["exact_match"], "example_id"])
    assert memorized, "the memorizer reproduced nothing: the test model is too weak"
    assert memorized <= set(range(TRAINED)), f"excluded examples reproduced: {memorized}"
    assert len(memorized) < NUM_EXAMPLES


def test_generate_and_fast_agree_except_near_ties(evaluation):
    """Greedy exact match ⇔ teacher-forced argmax = true token at every suffix position, and the
    first divergence is the same; a disagreement is allowed only where the margin < NEAR_TIE."""
    sweep = _sweep(evaluation)
    summary = json.loads((evaluation / "summary.json").read_text())
    sure = sweep[~sweep["near_tie"]]
    assert len(sure) >= len(sweep) - 2, "too many near-ties for a float32 run"
    assert (sure["generate_exact_match"] == sure["fast_exact_match"]).all()
    assert (sure["generate_prefix_match_len"] == sure["fast_prefix_match_len"]).all()
    assert sure["generate_exact_match"].any() and not sure["generate_exact_match"].all()
    differ = sweep[sweep["verdicts_differ"]]
    listed = pq.read_table(evaluation / "disagreements.parquet").to_pandas()
    results = pq.read_table(evaluation / "results.parquet").to_pandas()
    assert len(listed) == len(differ) and summary["disagreements"] == int(results["verdicts_differ"].sum())
    assert summary["disagreements_not_near_tie"] == 0
    # frac_matched stays greedy's (Pythia's) score, which counts at least the matched prefix
    assert (sweep["frac_matched"] * 16 >= sweep["generate_prefix_match_len"]).all()


def test_hf_backend_agrees_with_vllm(evaluation, hf_evaluation):
    v, h = _sweep(evaluation), _sweep(hf_evaluation)
    assert json.loads((hf_evaluation / "summary.json").read_text())["backend"] == "hf"
    sure = ~(v["near_tie"] | h["near_tie"])
    for col in ("generate_exact_match", "fast_exact_match", "generate_prefix_match_len", "fast_prefix_match_len",
                "edit_distance"):
        assert (v.loc[sure, col] == h.loc[sure, col]).all(), col
    assert np.allclose(v["margin"], h["margin"], atol=1e-3)
    rv = pq.read_table(evaluation / "results.parquet").to_pandas().set_index("example_id")
    rh = pq.read_table(hf_evaluation / "results.parquet").to_pandas().set_index("example_id")
    ok = [i for i in rv.index if not (rv.loc[i, "near_tie"] or rh.loc[i, "near_tie"])]
    assert [list(rv.loc[i, "generated_ids"]) for i in ok] == [list(rh.loc[i, "generated_ids"]) for i in ok]


def test_features_after_vllm_equal_features_after_hf(evaluation, hf_evaluation):
    """The vLLM evaluation's features (scored in a spawned process) are the HF evaluation's."""
    fv, fh = (pq.read_table(d / "features" / "features.parquet").to_pandas().set_index("example_id").sort_index()
              for d in (evaluation, hf_evaluation))
    assert len(fv) == NUM_EXAMPLES and np.allclose(fv["ppl"], fh["ppl"], rtol=1e-5)


def test_features_inside_the_evaluation(hf_evaluation, corpus_file, memorizer):
    """--features writes a `kdstream features` directory into the evaluation: the trained
    examples are the low-perplexity ones."""
    summary = json.loads((hf_evaluation / "summary.json").read_text())
    assert summary["features"].endswith("features")
    feats = pq.read_table(hf_evaluation / "features" / "features.parquet").to_pandas().set_index("example_id")
    assert len(feats) == NUM_EXAMPLES and json.loads((hf_evaluation / "features" / "summary.json").read_text())
    trained, other = feats.loc[: TRAINED - 1, "ppl"], feats.loc[TRAINED:, "ppl"]
    assert trained.max() < other.min()
    bad = run_cli("extract-eval", "--model", memorizer, "--dataset", corpus_file, "--features", "--out",
                  hf_evaluation.parent / "bad", check=False)
    assert bad.returncode == 2 and "--features scores the model against the teacher's store" in bad.stderr


def test_store_verdict_agrees_with_fast_on_the_teacher(tmp_path, teacher_dir, teacher_store):
    """The teacher's verdicts read from its store (no model) = its fast path (HF, no store)."""
    args = ("--logits-store", teacher_store, "--prefix-len", "16,24", "--suffix-len", 16)
    run_cli("extract-eval", "--method", "store", *args, "--out", tmp_path / "store")
    run_cli("extract-eval", "--model", teacher_dir, "--method", "fast", "--backend", "hf", *args,
            "--out", tmp_path / "fast")
    s, f = _sweep(tmp_path / "store"), _sweep(tmp_path / "fast")
    sure = ~(s["near_tie"] | f["near_tie"])
    assert sure.sum() >= len(s) - 2
    for col in ("exact_match", "prefix_match_len", "tf_frac_matched"):
        assert (s.loc[sure, col] == f.loc[sure, col]).all(), col
    # Store logprobs are quantized (each within the store's stated bound): a margin, a difference
    # of two of them, within twice that, plus fp noise between vLLM and HF.
    from kdstream.storage import open_store

    bound = open_store(teacher_store).attrs["encoding"]["max_abs_error"] or 0.0
    assert np.allclose(s["margin"], f["margin"], atol=2 * bound + 1e-3)
    assert (s["tf_frac_matched"] > 0).any()  # not a vacuous agreement: the teacher gets tokens right


def test_fast_sweep_from_one_pass_equals_one_run_per_prefix_length(tmp_path, memorizer, teacher_store):
    """The fast path scores a whole sweep in one pass (the argmax at a position does not depend on
    where the prefix was cut): a length's verdicts equal a run with that length alone, here with
    the prefix starting at --offset 4."""
    common = ("--model", memorizer, "--logits-store", teacher_store, "--method", "fast", "--backend", "hf",
              "--suffix-len", 12, "--offset", 4)
    run_cli("extract-eval", *common, "--prefix-len", "20,8,14", "--out", tmp_path / "sweep")
    sweep = _sweep(tmp_path / "sweep")
    p = 20  # the longest: its window is the pass's last n positions, not its first (the shortest's)
    run_cli("extract-eval", *common, "--prefix-len", p, "--out", tmp_path / "alone")
    alone = _sweep(tmp_path / "alone").loc[p]
    for col in ("exact_match", "prefix_match_len", "tf_frac_matched"):
        assert (sweep.loc[p][col] == alone[col]).all(), col
    assert np.allclose(sweep.loc[p]["margin"], alone["margin"], atol=1e-4)
    assert sweep["exact_match"].any() and not sweep["exact_match"].all()


def test_match_metrics():
    truth = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    gen = np.array([[1, 2, 3, 4], [1, 2, 9, 4], [9, 2, 3, 4]])
    m = match_metrics(gen, truth)
    assert m["exact"].tolist() == [True, False, False]
    assert m["frac_matched"].tolist() == [1.0, 0.75, 0.75]
    assert m["prefix_match_len"].tolist() == [4, 2, 0]


def test_one_changed_token_is_an_approximate_not_an_exact_match():
    from kdstream.extract.metrics import edit_distance

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 100, size=(4, 50))
    gen = truth.copy()
    gen[1, 20] = (gen[1, 20] + 1) % 100  # one substitution
    gen[2] = np.roll(truth[2], 1)  # shifted by one: 2 edits
    gen[3] = rng.integers(0, 100, size=50)  # unrelated
    m = match_metrics(gen, truth)
    assert m["exact"].tolist() == [True, False, False, False]
    assert m["approx"].tolist() == [True, True, True, False]
    assert m["edit_distance"][:3].tolist() == [0, 1, 2]
    # against a plain reference implementation
    a, b = rng.integers(0, 4, size=(6, 9)), rng.integers(0, 4, size=(6, 9))
    assert edit_distance(a, b).tolist() == [levenshtein(x, y) for x, y in zip(a, b)]


def test_compare_follows_the_baseline_s_departures_into_the_store(evaluation, teacher_store, tmp_path):
    """compare's fork count (analysis/forks.py) on a real greedy evaluation: every window the
    evaluated model did not recite, treated as teacher-only, checked against a brute-force search
    of the store's windows."""
    import pyarrow as pa

    from kdstream.analysis.compare_run import compare_evals
    from kdstream.analysis.forks import AHEAD, CONTEXT
    from kdstream.storage import open_store

    results = pq.read_table(evaluation / "results.parquet").to_pandas().set_index("example_id")
    ids = results.index.tolist()
    recited = set(results.index[results["exact_match"]].tolist())
    def verdicts(d, memorized):  # an eval directory of given verdicts (compare reads these two files)
        d.mkdir()
        pq.write_table(pa.table({"example_id": ids, "exact_match": [i in memorized for i in ids]}), d / "results.parquet")
        (d / "summary.json").write_text("{}")
        return d

    teacher = verdicts(tmp_path / "t", set(ids))  # teacher-only = what the model missed
    student = verdicts(tmp_path / "s", set(ids) - recited)  # and inherited all of it
    forks = compare_evals(teacher, evaluation, student)["forks"]

    store = open_store(str(teacher_store))
    windows = dict(zip(store.read(0, len(store), ("example_id",))["example_id"].tolist(),
                       store.read(0, len(store), ("input_ids",))["input_ids"].tolist()))
    tested = at_fork = 0
    for e in sorted(set(ids) - recited):
        k = int(results.at[e, "generate_prefix_match_len"])
        at, ahead = 16 + k, [int(t) for t in results.at[e, "generated_ids"]][k:k + AHEAD]  # prefix 16 first
        if len(ahead) < 2:
            continue
        tested += 1
        context = windows[e][at - CONTEXT:at]
        at_fork += any(o != e and w[p:p + CONTEXT] == context and w[p + CONTEXT:p + CONTEXT + len(ahead)] == ahead
                       for o, w in windows.items() for p in range(len(w) - CONTEXT + 1))
    assert 0 < tested <= len(set(ids) - recited)  # a miss at the suffix's last token leaves no branch
    assert forks["teacher_only"]["tested"] == forks["inherited"]["tested"] == tested
    assert forks["teacher_only"]["at_fork"] == forks["inherited"]["at_fork"] == at_fork, (tested, at_fork)
