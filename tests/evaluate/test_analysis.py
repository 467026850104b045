"""features / compare / classify on synthetic inputs: a tiny store written from a HF teacher's
forward pass (k = V, no vLLM), hand-built eval and features directories."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score
from click.testing import CliRunner

from helpers import VOCAB, make_gpt_neox
from kdstream.cli.analysis import ANALYSIS_COMMANDS, classify, compare, features, report
from kdstream.errors import KdError
from kdstream.evaluate.classify_run import ClassifyRunOptions, classification_table, run_classify
from kdstream.evaluate.comparison import compare_evals, venn_regions, write_comparison
from kdstream.evaluate.features_run import FeaturesOptions, run_features
from kdstream.evaluate.report import ReportOptions, run_report
from kdstream.evaluate.study_dirs import FEATURE_COLUMNS

SEQ = 32
EXAMPLES = 24
CHUNK = 8  # store rows per chunk: 3 chunks


# ---- a tiny store from a real forward pass ---------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("analysis_models")
    teacher = make_gpt_neox(d / "teacher", tokenizer, layers=1, hidden=64, heads=1, seed=3)
    baseline = make_gpt_neox(d / "baseline", tokenizer, layers=1, hidden=64, heads=1, seed=4)
    return teacher, baseline


@pytest.fixture(scope="module")
def store(tmp_path_factory, models, tokenizer, docs):
    """24 examples of 32 tokens, k = V = 512: top-k, target logprob and rank of the teacher."""
    from transformers import AutoModelForCausalLM

    from kdstream.data import pack_examples, tokenizer_fingerprint
    from kdstream.storage import StoreWriter

    ex = pack_examples(docs, tokenizer, SEQ, EXAMPLES)
    assert len(ex) == EXAMPLES
    net = AutoModelForCausalLM.from_pretrained(str(models[0]), dtype=torch.float32).eval()
    with torch.no_grad():
        ids = torch.as_tensor(ex.input_ids)
        logp = net(input_ids=ids).logits[:, :-1].float().log_softmax(-1)  # (S, L-1, V)
    vals, top = logp.topk(VOCAB, -1)  # descending, k = V
    target = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (S, L-1)
    rank = 1 + (logp > target[..., None]).sum(-1)
    url = tmp_path_factory.mktemp("analysis_store") / "teacher.zarr"
    w = StoreWriter(str(url), num_examples=EXAMPLES, seq_len=SEQ, k=VOCAB, vocab_size=VOCAB, chunk_rows=CHUNK,
                    attrs={"tokenizer": tokenizer_fingerprint(tokenizer), "teacher": {"path": str(models[0])}})
    w.append({"input_ids": ex.input_ids, "example_id": ex.example_id, "doc_index": ex.doc_index,
              "topk_ids": top.numpy(), "topk_logprobs": vals.numpy(), "target_logprob": target.numpy(),
              "target_rank": rank.numpy()})
    w.finalize()
    return url


@pytest.fixture(scope="module")
def scored(tmp_path_factory, models, store):
    """run_features for teacher and baseline -> (teacher out, teacher summary, baseline out, summary)."""
    d = tmp_path_factory.mktemp("analysis_features")
    opts = dict(logits_store=str(store), prefix_len=16, suffix_len=16, batch_size=5)
    t = run_features(FeaturesOptions(model=str(models[0]), out=str(d / "teacher"), **opts))
    b = run_features(FeaturesOptions(model=str(models[1]), out=str(d / "baseline"), **opts))
    return d / "teacher", t, d / "baseline", b


def test_features_one_row_per_example(scored, store):
    from kdstream.storage import open_store

    t_dir, t_sum, b_dir, _ = scored
    frame = pq.read_table(t_dir / "features.parquet").to_pandas()
    assert list(frame.columns) == list(FEATURE_COLUMNS)
    assert len(frame) == EXAMPLES == t_sum["examples"]
    np.testing.assert_array_equal(frame["example_id"], open_store(str(store)).read(0, EXAMPLES, ("example_id",))["example_id"])
    assert frame.notna().all().all()
    assert {"options.yaml", "summary.json", "features.parquet"} <= {p.name for p in t_dir.iterdir()}
    assert yaml.safe_load((t_dir / "options.yaml").read_text())["prefix_len"] == 16
    assert not t_dir.with_name("teacher.partial").exists()
    assert json.loads((t_dir / "summary.json").read_text())["k"] == VOCAB


def test_teacher_against_its_own_store(scored):
    """k = V: KL(teacher ‖ teacher) ≈ 0, and its ppl is the store's exp(−mean target_logprob)."""
    frame = pq.read_table(scored[0] / "features.parquet").to_pandas()
    np.testing.assert_allclose(frame["teacher_kl"], 0.0, atol=1e-4)
    np.testing.assert_allclose(frame["ppl"], frame["teacher_ppl_from_store"], rtol=1e-4)
    np.testing.assert_allclose(frame["zlib_ratio"], np.log(frame["ppl"]) / frame["zlib_entropy"], rtol=1e-12)


def test_baseline_features(scored):
    t = pq.read_table(scored[0] / "features.parquet").to_pandas()
    b = pq.read_table(scored[2] / "features.parquet").to_pandas()
    assert (b["teacher_kl"] > 1e-3).all()  # another random model: KL(teacher ‖ baseline) > 0
    np.testing.assert_array_equal(b["zlib_entropy"], t["zlib_entropy"])  # text features depend on the text only
    np.testing.assert_array_equal(b["teacher_ppl_from_store"], t["teacher_ppl_from_store"])
    assert not np.allclose(b["ppl"], t["ppl"])


def test_features_read_whole_chunks(monkeypatch, tmp_path, models, store):
    from kdstream.storage.reader import LogitStore

    calls = []
    original = LogitStore.read

    def spy(self, start, stop, keys=None):
        calls.append((start, stop))
        return original(self, start, stop, keys) if keys else original(self, start, stop)

    monkeypatch.setattr(LogitStore, "read", spy)
    out = run_features(FeaturesOptions(model=str(models[1]), logits_store=str(store), out=str(tmp_path / "f"),
                                       prefix_len=8, suffix_len=8, max_examples=20))
    assert out["examples"] == 20
    assert calls == [(0, 8), (8, 16), (16, 20)]
    assert len(pq.read_table(tmp_path / "f" / "features.parquet")) == 20


def test_features_refuses_other_tokenizer_and_existing_output(tmp_path, store, docs, scored):
    from kdstream.data.tokenizer import train_bpe_tokenizer

    other = train_bpe_tokenizer(docs[:60], 300, tmp_path / "tok")
    model = make_gpt_neox(tmp_path / "other", other, layers=1, hidden=64, heads=1)
    with pytest.raises(KdError, match="tokenizer of .* differs from the store's"):
        run_features(FeaturesOptions(model=str(model), logits_store=str(store), out=str(tmp_path / "o"),
                                     prefix_len=8, suffix_len=8))
    assert not (tmp_path / "o").exists()
    with pytest.raises(KdError, match="--overwrite"):
        run_features(FeaturesOptions(model=str(model), logits_store=str(store), out=str(scored[0])))
    with pytest.raises(KdError, match="exceeds"):
        run_features(FeaturesOptions(model=str(model), logits_store=str(store), out=str(tmp_path / "o"),
                                     prefix_len=30, suffix_len=10))
    with pytest.raises(KdError):
        FeaturesOptions(model="m", logits_store="s", out="o", batch_size=0)


# ---- compare ----------------------------------------------------------------------------------

def write_eval(d, ids, memorized):
    d.mkdir(parents=True)
    ids = np.asarray(ids, dtype=np.int64)
    exact = np.isin(ids, list(memorized))
    pq.write_table(pa.table({"example_id": ids, "exact_match": exact, "frac_matched": exact.astype(float)}),
                   d / "results.parquet")
    (d / "summary.json").write_text(json.dumps({"examples": len(ids), "memorized": int(exact.sum())}))
    return d


T = set(range(10))  # 0..9
B = set(range(5, 13))  # 5..12
S = {3, 8, 9, 10, 13}


@pytest.fixture
def evals(tmp_path):
    ids = np.arange(20)
    rng = np.random.default_rng(0)
    return (write_eval(tmp_path / "t", rng.permutation(ids), T), write_eval(tmp_path / "b", ids, B),
            write_eval(tmp_path / "s", rng.permutation(ids), S))


def test_compare_counts_and_venn_by_hand(evals, tmp_path):
    cmp = compare_evals(*evals)
    assert cmp["examples"] == 20
    assert cmp["memorized"] == {"teacher": 10, "baseline": 8, "student": 5}
    assert cmp["student_and_baseline"] == 3  # 8, 9, 10
    assert cmp["student_and_teacher"] == 3  # 3, 8, 9
    assert cmp["all_three"] == 2  # 8, 9
    assert cmp["teacher_only"] == 5  # teacher ∖ baseline: 0..4
    assert cmp["teacher_only_inherited_by_student"] == 1  # 3
    assert cmp["student_over_baseline"] == pytest.approx(5 / 8)
    assert cmp["venn"] == {
        "teacher_only": 4,  # 0, 1, 2, 4
        "baseline_only": 2,  # 11, 12
        "student_only": 1,  # 13
        "teacher_baseline_only": 3,  # 5, 6, 7
        "teacher_student_only": 1,  # 3
        "baseline_student_only": 1,  # 10
        "all_three": 2,  # 8, 9
    }
    assert sum(cmp["venn"].values()) == cmp["union"] == 14
    assert cmp["student_memorized_by_both_others"] == pytest.approx(2 / 5)

    paths = write_comparison(cmp, tmp_path / "cmp")
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["venn"]["teacher_student_only"] == 1
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| teacher ∩ student, not baseline | 1 |" in md and "| student | 5 / 20 | 25.00% |" in md
    assert "40.0%" in md and set(paths) == {"comparison.json", "comparison.md"}


def test_venn_when_student_memorized_nothing(tmp_path):
    ids = range(6)
    cmp = compare_evals(write_eval(tmp_path / "t", ids, {0}), write_eval(tmp_path / "b", ids, set()),
                        write_eval(tmp_path / "s", ids, set()))
    assert np.isnan(cmp["student_memorized_by_both_others"])
    write_comparison(cmp, tmp_path / "o")
    assert json.loads((tmp_path / "o" / "comparison.json").read_text())["student_memorized_by_both_others"] is None
    assert venn_regions({1}, {1}, {1})["all_three"] == 1


def test_compare_errors(tmp_path, evals):
    with pytest.raises(KdError, match="not found"):
        compare_evals(tmp_path / "missing", evals[1], evals[2])
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdError, match="results.parquet"):
        compare_evals(evals[0], tmp_path / "empty", evals[2])
    other = write_eval(tmp_path / "other", range(5, 25), S)
    with pytest.raises(KdError, match="same store"):
        compare_evals(evals[0], evals[1], other)
    _, teacher, _, _ = synthetic_dirs(tmp_path / "syn")  # features of ids 500..699, not 0..19
    with pytest.raises(KdError, match="have no teacher features"):
        compare_evals(*evals, {"teacher": teacher})


def test_compare_feature_summaries_memorized_vs_not(tmp_path):
    student, teacher, baseline, positives = synthetic_dirs(tmp_path)
    cmp = compare_evals(student, student, student, {"teacher": teacher, "baseline": baseline})
    tf = pq.read_table(teacher / "features.parquet").to_pandas().set_index("example_id")
    mem = tf.index.isin(list(positives))
    got = cmp["features"]["teacher"]["student"]
    assert got["memorized"]["examples"] == 30 and got["not_memorized"]["examples"] == 170
    assert got["memorized"]["median"]["zlib_entropy"] == float(tf.loc[mem, "zlib_entropy"].median())
    assert got["not_memorized"]["mean"]["ppl"] == pytest.approx(tf.loc[~mem, "ppl"].mean(), rel=1e-12)
    assert got["memorized"]["median"]["ppl"] < got["not_memorized"]["median"]["ppl"]  # memorized = easy
    assert set(cmp["features"]) == {"teacher", "baseline"} and set(got["memorized"]["mean"]) == {
        "ppl", "teacher_kl", "zlib_entropy"}
    write_comparison(cmp, tmp_path / "o")
    md = (tmp_path / "o" / "comparison.md").read_text()
    assert f"| zlib_entropy | {got['memorized']['median']['zlib_entropy']:.4g} |" in md


# ---- classify ---------------------------------------------------------------------------------

def synthetic_dirs(root, n_pos=30, n_neg=170, seed=0):
    """Features dirs and a student eval where memorized examples have low zlib entropy and ppl.
    Rows are stored in a different order in each file (joined by example_id)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n_pos + n_neg) + 500
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    noise = rng.normal(size=(len(ids), 4))
    t_ppl = np.exp(1.5 + 0.3 * noise[:, 0] - 1.0 * y)
    b_ppl = np.exp(2.5 + 0.3 * noise[:, 1] - 1.0 * y)
    kl = 0.5 + 0.1 * np.abs(noise[:, 2])
    zlib = 300 + 20 * noise[:, 3] - 50 * y

    def features_dir(name, ppl):
        d = root / name
        d.mkdir(parents=True)
        order = rng.permutation(len(ids))
        pq.write_table(pa.table({"example_id": ids[order], "ppl": ppl[order], "teacher_kl": kl[order],
                                 "zlib_entropy": zlib[order].round().astype(np.int64)}), d / "features.parquet")
        (d / "summary.json").write_text("{}")
        return d

    teacher, baseline = features_dir("tf", t_ppl), features_dir("bf", b_ppl)
    order = rng.permutation(len(ids))
    student = write_eval(root / "se", ids[order], set(ids[y].tolist()))
    return student, teacher, baseline, set(ids[y].tolist())


def test_classify_auc_determinism_and_filter(tmp_path):
    student, teacher, baseline, positives = synthetic_dirs(tmp_path)
    base = dict(student_eval=str(student), teacher_features=str(teacher), baseline_features=str(baseline), repeats=20)
    r1 = run_classify(ClassifyRunOptions(out=str(tmp_path / "c1"), **base))
    assert r1["auc"]["mean"] > 0.9
    assert r1["positives"] == 30 and r1["negatives"] == 170 and r1["examples"] == 200
    assert r1["coefficients"]["zlib_entropy"]["mean"] < 0 and r1["filter"] is None
    assert not (tmp_path / "c1" / "exclude.txt").exists()
    r2 = run_classify(ClassifyRunOptions(out=str(tmp_path / "c2"), **base))
    assert r1 == r2
    held = pq.read_table(tmp_path / "c1" / "heldout.parquet").to_pandas()
    assert held.equals(pq.read_table(tmp_path / "c2" / "heldout.parquet").to_pandas())
    assert sorted(held["repeat"].unique()) == list(range(20))
    aucs = [roc_auc_score(g["label"], g["score"]) for _, g in held.groupby("repeat")]
    assert np.mean(aucs) == pytest.approx(r1["auc"]["mean"], rel=1e-12)  # the ROC curves are those of the AUCs
    assert set(held["example_id"]) <= set(range(500, 700))
    assert json.loads((tmp_path / "c1" / "classification.json").read_text()) == r1
    assert run_classify(ClassifyRunOptions(out=str(tmp_path / "c3"), seed=1, **base)) != r1

    rf = run_classify(ClassifyRunOptions(out=str(tmp_path / "cf"), filter=True, target_recall=0.9, **base))
    excluded = {int(x) for x in (tmp_path / "cf" / "exclude.txt").read_text().split()}
    assert len(excluded & positives) >= 0.9 * len(positives)
    assert len(excluded) < 200
    f = rf["filter"]
    assert f["flagged"] == len(excluded) and f["target_recall"] == 0.9 and 0 <= f["expected_recall"] <= 1
    assert f["train_recall"] >= 0.9 and 0 < f["threshold"] < 1
    table = pq.read_table(tmp_path / "cf" / "table.parquet").to_pandas()
    assert set(table.loc[table["flagged"], "example_id"]) == excluded
    assert table["memorized"].sum() == 30
    from kdstream.distill.sources import read_exclude  # the reader `distill --exclude` uses

    assert read_exclude(str(tmp_path / "cf" / "exclude.txt")) == frozenset(excluded)


def test_classify_joins_by_example_id(tmp_path):
    student, teacher, baseline, positives = synthetic_dirs(tmp_path)
    table, labels = classification_table(student, teacher, baseline)
    ev = pq.read_table(student / "results.parquet").to_pandas()
    tf = pq.read_table(teacher / "features.parquet").to_pandas().set_index("example_id")
    bf = pq.read_table(baseline / "features.parquet").to_pandas().set_index("example_id")
    np.testing.assert_array_equal(table["example_id"], ev["example_id"])
    np.testing.assert_array_equal(labels, ev["exact_match"])
    np.testing.assert_array_equal(table["teacher_ppl"], tf.loc[ev["example_id"], "ppl"])
    np.testing.assert_array_equal(table["baseline_ppl"], bf.loc[ev["example_id"], "ppl"])
    np.testing.assert_array_equal(table["teacher_baseline_kl"], bf.loc[ev["example_id"], "teacher_kl"])
    np.testing.assert_array_equal(table["zlib_entropy"], tf.loc[ev["example_id"], "zlib_entropy"])


def test_classify_errors(tmp_path):
    student, teacher, baseline, _ = synthetic_dirs(tmp_path)
    base = dict(student_eval=str(student), teacher_features=str(teacher), baseline_features=str(baseline),
                out=str(tmp_path / "c"), repeats=2)
    with pytest.raises(KdError, match="not found"):
        run_classify(ClassifyRunOptions(**{**base, "teacher_features": str(tmp_path / "nope")}))
    with pytest.raises(KdError, match="not found"):
        run_classify(ClassifyRunOptions(**{**base, "student_eval": str(tmp_path / "nope")}))
    short = write_eval(tmp_path / "short", np.arange(10, 400), {10, 11, 12})  # ids beyond the features
    with pytest.raises(KdError, match="no teacher features"):
        run_classify(ClassifyRunOptions(**{**base, "student_eval": str(short)}))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(KdError, match="kdstream did not write"):
        run_classify(ClassifyRunOptions(**{**base, "out": str(tmp_path / "busy")}))
    assert (tmp_path / "busy" / "keep.txt").exists()
    for bad in ({"repeats": 0}, {"target_recall": 0.0}, {"test_size": 1.0}, {"negative_ratio": 0}):
        with pytest.raises(KdError):
            ClassifyRunOptions(**{**base, **bad})


# ---- commands -----------------------------------------------------------------------------------

def test_commands_through_click(tmp_path, evals, models, store):
    assert ANALYSIS_COMMANDS == [features, compare, classify, report]
    runner = CliRunner()

    r = runner.invoke(compare, [*map(str, evals), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    assert "| teacher | 10 / 20 | 50.00% |" in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1])["venn"]["all_three"] == 2
    assert (tmp_path / "cmp" / "comparison.json").is_file() and (tmp_path / "cmp" / "comparison.md").is_file()

    student, teacher, baseline, _ = synthetic_dirs(tmp_path / "syn")
    config = tmp_path / "classify.yaml"
    config.write_text(yaml.safe_dump({"repeats": 3, "target-recall": 0.9}))
    r = runner.invoke(classify, ["--config", str(config), "--student-eval", str(student), "--teacher-features",
                                 str(teacher), "--baseline-features", str(baseline), "--out", str(tmp_path / "cls"),
                                 "--filter", "--seed", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["repeats"] == 3 and out["seed"] == 1 and out["filter"]["target_recall"] == 0.9
    assert {p.name for p in (tmp_path / "cls").iterdir()} == {
        "classification.json", "options.yaml", "table.parquet", "heldout.parquet", "exclude.txt",
        ".kdstream-output.json"}  # the owner file: only classify may replace this directory

    r = runner.invoke(features, ["--model", str(models[1]), "--logits-store", str(store), "--out",
                                 str(tmp_path / "feat"), "--prefix-len", "8", "--suffix-len", "8", "--max-examples", "4"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["examples"] == 4

    r = runner.invoke(compare, [str(tmp_path / "missing"), *map(str, evals[1:]), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and isinstance(r.exception, KdError)
    assert "not found" in str(r.exception)
    r = runner.invoke(classify, ["--student-eval", str(tmp_path / "missing"), "--teacher-features", str(teacher),
                                 "--baseline-features", str(baseline), "--out", str(tmp_path / "y")])
    assert isinstance(r.exception, KdError)


def test_classify_command_is_deterministic_given_seed(tmp_path):
    student, teacher, baseline, _ = synthetic_dirs(tmp_path / "syn")
    args = ["--student-eval", str(student), "--teacher-features", str(teacher), "--baseline-features", str(baseline),
            "--repeats", "4", "--filter"]
    outs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        r = CliRunner().invoke(classify, [*args, "--seed", seed, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        outs.append(tmp_path / name)
    a, b, c = (json.loads((d / "classification.json").read_text()) for d in outs)
    for result in (a, b, c):
        assert result["filter"].pop("exclude_file").endswith("exclude.txt")  # names its own --out
    assert a == b and a != c
    for name in ("heldout.parquet", "table.parquet", "exclude.txt"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


# ---- report ---------------------------------------------------------------------------------------

def study_eval(d, ids, memorized, prefix_len=16, by_prefix_len=None):
    """An extract-eval directory as extract-eval writes it: results + summary with prefix_len."""
    write_eval(d, ids, memorized)
    n, m = len(ids), len(set(memorized))
    summary = {"examples": n, "memorized": m, "rate": m / n, "prefix_len": prefix_len, "suffix_len": 16}
    if by_prefix_len is not None:
        summary["by_prefix_len"] = by_prefix_len
    (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.fixture(scope="module")
def study(tmp_path_factory, store, scored):
    """Evals over the real store's 24 example ids, the real features of `scored` and a real
    classify run: everything `report` reads, without running vLLM."""
    from kdstream.storage import open_store

    root = tmp_path_factory.mktemp("study")
    ids = open_store(str(store)).read(0, EXAMPLES, ("example_id",))["example_id"]
    t, b, s = set(ids[:12].tolist()), set(ids[6:16].tolist()), set(ids[[2, 8, 10, 14, 20, 21]].tolist())
    teacher_points = [{"prefix_len": 8, "examples": 24, "memorized": 9, "rate": 9 / 24},
                      {"prefix_len": 16, "examples": 24, "memorized": 12, "rate": 0.5}]
    evals = (study_eval(root / "et", ids, t, by_prefix_len=teacher_points), study_eval(root / "eb", ids, b),
             study_eval(root / "es", ids, s))
    student_p8 = study_eval(root / "es8", ids, set(ids[[2, 8, 14]].tolist()), prefix_len=8)
    cls = run_classify(ClassifyRunOptions(student_eval=str(evals[2]), teacher_features=str(scored[0]),
                                          baseline_features=str(scored[2]), out=str(root / "cls"), repeats=6,
                                          filter=True, target_recall=0.8))
    return {"evals": evals, "sets": (t, b, s), "ids": ids, "student_p8": student_p8, "cls_dir": root / "cls",
            "cls": cls, "root": root}


def _report_args(study, scored, out):
    t, b, s = study["evals"]
    return ["--teacher-eval", str(t), "--baseline-eval", str(b), "--student-eval", str(s), "--out", str(out)]


def _assert_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 15_000, (path, len(data))
    img = matplotlib.image.imread(path)  # (H, W, 4) floats
    assert img.shape[0] > 300 and img.shape[1] > 300 and img[..., :3].std() > 0.05


def test_report_over_a_tiny_study(study, scored, tmp_path):
    out = tmp_path / "report"
    args = [*_report_args(study, scored, out), "--teacher-features", str(scored[0]), "--baseline-features",
            str(scored[2]), "--classify", str(study["cls_dir"]), "--prefix-eval", f"student={study['student_p8']}"]
    r = CliRunner().invoke(report, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["auc_mean"] == study["cls"]["auc"]["mean"]
    names = {p.name for p in out.iterdir()}
    assert names == {"report.md", "report.json", "options.yaml", "venn.png", "zlib_entropy.png", "roc.png",
                     "rate_by_prefix_len.png", ".kdstream-output.json"}
    for png in ("venn.png", "zlib_entropy.png", "roc.png", "rate_by_prefix_len.png"):
        _assert_png(out / png)
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()

    # the same numbers as compare and classify write
    r = CliRunner().invoke(compare, [*map(str, study["evals"]), "--out", str(tmp_path / "cmp"), "--teacher-features",
                                     str(scored[0]), "--baseline-features", str(scored[2])])
    assert r.exit_code == 0, r.output
    assert rep["comparison"] == json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert rep["classifier"] == json.loads((study["cls_dir"] / "classification.json").read_text()) == study["cls"]
    t, b, s = study["sets"]
    assert rep["comparison"]["memorized"] == {"teacher": 12, "baseline": 10, "student": 6}
    assert rep["comparison"]["venn"] == venn_regions(t, b, s) and rep["notes"] == {}
    assert "| teacher | 12 / 24 | 50.00% |" in md and "| student | 6 / 24 | 25.00% |" in md
    for key, label in (("all_three", "teacher ∩ baseline ∩ student"), ("student_only", "student only")):
        assert f"| {label} | {rep['comparison']['venn'][key]} |" in md
    c = rep["classifier"]
    assert f"| auc | {c['auc']['mean']:.3f} | {c['auc']['sd']:.3f} |" in md
    assert f"threshold {c['filter']['threshold']:.4g} flags {c['filter']['flagged']} examples" in md

    # zlib entropy medians: the features' values over each model's memorized set
    zlib = pq.read_table(scored[0] / "features.parquet").to_pandas().set_index("example_id")["zlib_entropy"]
    for role, mem in zip(("teacher", "baseline", "student"), (t, b, s)):
        want = float(np.median(zlib.loc[sorted(mem)]))
        assert rep["zlib_entropy"][role]["memorized"]["median"] == want
        assert rep["zlib_entropy"][role]["memorized"]["examples"] == len(mem)
        assert f"| {role} | {len(mem)} | {want:.4g} |" in md

    # prefix lengths: the teacher's by_prefix_len, the student's main eval + its --prefix-eval
    points = {(p["role"], p["prefix_len"]): (p["memorized"], p["rate"]) for p in rep["prefix_len"]["points"]}
    assert points == {("teacher", 8): (9, 9 / 24), ("teacher", 16): (12, 0.5), ("baseline", 16): (10, 10 / 24),
                      ("student", 8): (3, 3 / 24), ("student", 16): (6, 0.25)}
    assert "| teacher | 8 | 16 | 9 / 24 | 37.50% |" in md
    for png in rep["plots"].values():
        assert f"]({png})" in md


def test_report_without_optional_inputs_says_what_to_pass(study, scored, tmp_path):
    r = CliRunner().invoke(report, _report_args(study, scored, tmp_path / "r"))
    assert r.exit_code == 0, r.output
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.md", "report.json", "options.yaml", "venn.png",
                                                             "rate_by_prefix_len.png", ".kdstream-output.json"}
    md = (tmp_path / "r" / "report.md").read_text()
    assert "pass --classify DIR" in md and "pass --teacher-features DIR" in md
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["classifier"] is None and rep["zlib_entropy"] is None and rep["comparison"]["features"] == {}

    # a classify output from before heldout.parquet: numbers, no ROC, and the note says how to get it
    old = tmp_path / "old_cls"
    old.mkdir()
    (old / "classification.json").write_text((study["cls_dir"] / "classification.json").read_text())
    r = CliRunner().invoke(report, [*_report_args(study, scored, tmp_path / "r2"), "--classify", str(old)])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "r2" / "roc.png").exists()
    assert "rerun `kdstream classify`" in (tmp_path / "r2" / "report.md").read_text()


def test_report_errors_are_one_line(study, scored, tmp_path):
    from helpers import run_cli

    args = _report_args(study, scored, tmp_path / "r")
    args[1] = str(tmp_path / "missing")
    proc = run_cli("report", *args, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: teacher evaluation")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()

    clash = study_eval(tmp_path / "clash", study["ids"], set(study["ids"][:3].tolist()), prefix_len=8)
    with pytest.raises(KdError, match="teacher at prefix length 8"):  # by_prefix_len says 9 memorized
        run_report(ReportOptions(teacher_eval=str(study["evals"][0]), baseline_eval=str(study["evals"][1]),
                                 student_eval=str(study["evals"][2]), out=str(tmp_path / "r3"),
                                 prefix_eval=(f"teacher={clash}",)))
    with pytest.raises(KdError, match="ROLE=DIR"):
        ReportOptions(teacher_eval="t", baseline_eval="b", student_eval="s", out="o", prefix_eval=("pupil=x",))
    with pytest.raises(KdError, match="no classification.json"):
        run_report(ReportOptions(*map(str, study["evals"]), out=str(tmp_path / "r4"), classify=str(tmp_path)))
