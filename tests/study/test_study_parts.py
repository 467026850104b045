"""The study's parts without training: canary planting, the config, the paper's verdicts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kdstream.errors import KdError

REPO = Path(__file__).resolve().parents[2]


def test_canaries_are_planted_whole_and_counted(tokenizer, docs, tmp_path):
    from kdstream.data import pack_examples
    from kdstream.data.corpus import load_corpus
    from kdstream.study.canaries import CANARY_CORPUS, CANARY_FILE, STUDY_CORPUS, build_study_corpus, copies_in_windows
    from kdstream.study.config import StudyConfig

    cfg = StudyConfig(examples=120, seq_len=64, canary_counts=(1, 2, 4), canaries_per_count=1,
                      canary_prefix_len=8, canary_suffix_len=8, prefix_len=16, suffix_len=16)
    build_study_corpus(tmp_path, docs, tokenizer, cfg, seed=3)
    canaries = json.loads((tmp_path / CANARY_FILE).read_text())
    assert [c["count"] for c in canaries] == [1, 2, 4]
    train = pack_examples(load_corpus(str(tmp_path / STUDY_CORPUS)).texts, tokenizer, 64, 120).input_ids
    for c in canaries:
        assert len(c["token_ids"]) == 16
        # every copy is inside one training window (none straddles a boundary)
        assert copies_in_windows(train, c["token_ids"]) == c["count"] == c["copies_in_training"]
    # canaries.jsonl packed at canary length + 1 gives one canary per window, in order
    windows = pack_examples(load_corpus(str(tmp_path / CANARY_CORPUS)).texts, tokenizer, 17).input_ids
    assert len(windows) == len(canaries)
    assert all(np.array_equal(windows[i, :16], c["token_ids"]) for i, c in enumerate(canaries))
    # the rest of the corpus is untouched, in order
    planted = load_corpus(str(tmp_path / STUDY_CORPUS)).texts
    texts = {c["text"] for c in canaries}
    assert [t for t in planted if t not in texts] == docs[: len(planted) - sum(c["count"] for c in canaries)]
    # another seed plants other canaries
    other = tmp_path / "other"
    other.mkdir()
    build_study_corpus(other, docs, tokenizer, cfg, seed=4)
    assert json.loads((other / CANARY_FILE).read_text())[0]["text"] != canaries[0]["text"]


def _plant_at_boundaries_only(texts, canaries, tokenizer, examples, seq_len, rng):
    """canaries.plant as it was before issue 14 (copies only between documents), verbatim: the
    reference that the demo's planting must still equal."""
    from kdstream.study.canaries import _lengths

    extra = 1 if tokenizer.eos_token_id is not None else 0
    copies = [c for c in canaries for _ in range(c["count"])]
    rng.shuffle(copies)
    need = examples * seq_len
    planted_tokens = sum(len(c["token_ids"]) + extra for c in copies)
    room = int(0.6 * (need - planted_tokens))
    if room <= seq_len:
        raise KdError("do not fit")
    targets = np.sort(rng.integers(0, room, size=len(copies)))
    out: list[str] = []
    offset, nxt = 0, 0
    for doc_len, text in zip(_lengths(texts, tokenizer, need), texts):
        while nxt < len(copies) and targets[nxt] <= offset:
            size = len(copies[nxt]["token_ids"]) + extra
            if offset % seq_len + size > seq_len:
                break
            if offset + size > need:
                break
            out.append(copies[nxt]["text"])
            offset += size
            nxt += 1
        out.append(text)
        offset += doc_len
        if offset >= need and nxt == len(copies):
            break
    if nxt < len(copies):
        raise KdError(f"only {nxt} of {len(copies)} canary copies fit")
    return out + texts[len(out) - nxt:]


def _draw(tokenizer, cfg, seed):
    """The canaries and the generator state build_study_corpus plants them with."""
    from kdstream.study.canaries import make_canaries

    rng = np.random.default_rng([seed, 0xCA7A])
    return make_canaries(tokenizer, cfg.canary_counts, cfg.canaries_per_count, cfg.canary_tokens, rng), rng


def test_the_demo_corpus_is_planted_as_before_documents_could_be_split(tmp_path):
    """The embedded docstrings with the study settings of the demo before issue 19 (256 windows of
    128 tokens) and their own 4096-token BPE: the same corpus as the boundary-only planting, so a
    study at those settings does not change for a seed."""
    from kdstream.data.demo_corpus import demo_documents
    from kdstream.study.canaries import plant
    from kdstream.study.config import StudyConfig
    from kdstream.text.tokenizers import train_bpe_tokenizer

    cfg = StudyConfig(dataset="demo", examples=256, seq_len=128)
    docs = demo_documents()
    tokenizer = train_bpe_tokenizer(docs, cfg.tokenizer_vocab, tmp_path)
    for seed in (0, 1):
        canaries, rng = _draw(tokenizer, cfg, seed)
        state = rng.bit_generator.state
        before = _plant_at_boundaries_only(docs, canaries, tokenizer, cfg.examples, cfg.seq_len, rng)
        rng.bit_generator.state = state
        assert plant(docs, canaries, tokenizer, cfg.examples, cfg.seq_len, rng) == before


def test_canaries_fit_in_a_corpus_of_long_documents(tokenizer, docs, tmp_path):
    """Ten documents of ~1,000 tokens (15 windows each): too few boundaries for 30 copies, so
    documents are split at window boundaries; every copy is whole in the training windows and
    the corpus text is all there, in order."""
    from kdstream.data import pack_examples
    from kdstream.data.corpus import load_corpus
    from kdstream.study.canaries import STUDY_CORPUS, build_study_corpus, copies_in_windows
    from kdstream.study.config import StudyConfig

    long_docs = ["\n\n".join(docs[i : i + 12]) for i in range(0, 120, 12)]
    assert min(len(tokenizer(d)["input_ids"]) for d in long_docs) > 10 * 64
    cfg = StudyConfig(examples=120, seq_len=64, canary_counts=(1, 2, 4, 8), canaries_per_count=2,
                      canary_prefix_len=8, canary_suffix_len=8, prefix_len=16, suffix_len=16)
    canaries, rng = _draw(tokenizer, cfg, 0)
    with pytest.raises(KdError, match="only"):  # the old planting: copies go only between documents
        _plant_at_boundaries_only(long_docs, canaries, tokenizer, cfg.examples, cfg.seq_len, rng)

    build_study_corpus(tmp_path, long_docs, tokenizer, cfg, seed=0)
    planted = load_corpus(str(tmp_path / STUDY_CORPUS)).texts
    train = pack_examples(planted, tokenizer, cfg.seq_len, cfg.examples).input_ids
    texts = {c["text"] for c in canaries}
    for c in canaries:
        assert copies_in_windows(train, c["token_ids"]) >= c["count"]
    rest = [t for t in planted if t not in texts]
    assert len(rest) > len(long_docs)  # split
    assert "".join(rest) == "".join(long_docs)


def test_too_many_canaries_is_one_line_error(tokenizer, docs, tmp_path):
    from kdstream.study.canaries import build_study_corpus
    from kdstream.study.config import StudyConfig

    cfg = StudyConfig(examples=4, seq_len=64, canary_counts=(16,), canaries_per_count=2, prefix_len=16,
                      suffix_len=16, canary_prefix_len=8, canary_suffix_len=8)
    with pytest.raises(KdError, match="canary copies do not fit"):
        build_study_corpus(tmp_path, docs, tokenizer, cfg, seed=0)


def test_paper_config_loads_and_bad_keys_are_refused(tmp_path):
    from kdstream.study.config import load_study_config

    cfg = load_study_config(str(REPO / "configs" / "study.yaml"), {"seeds": 3})
    assert (cfg.examples, cfg.seq_len, cfg.prefix_len, cfg.suffix_len) == (1_000_000, 256, 50, 50)
    assert (cfg.teacher_epochs, cfg.student_epochs, cfg.temperature, cfg.seeds) == (3, 4, 2.0, 3)
    assert cfg.canary_counts == () and cfg.train_launcher[0] == "torchrun"
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\n")
    with pytest.raises(KdError, match="unknown keys epochs"):
        load_study_config(str(bad), {})
    bad.write_text("canary_counts: [1, two]\n")
    with pytest.raises(KdError, match="canary_counts item is \"two\", not an integer"):
        load_study_config(str(bad), {})
    bad.write_text("prefix_len: 100\nsuffix_len: 100\nseq_len: 128\n")
    with pytest.raises(KdError, match="must fit in seq_len"):
        load_study_config(str(bad), {})


def _figs(teacher, baseline, student, inherited=0, both=0, cls=None, flt=None, teacher_only=None, examples=100,
          hard=None):
    """One seed's figures from memorized sets built to these counts (windows 0, 1, ... in turn)."""
    from kdstream.study.intervals import window_patterns

    only = teacher_only if teacher_only is not None else max(teacher - baseline, min(4, teacher))
    tb = teacher - only  # memorized by teacher and baseline
    assert tb <= baseline and both <= tb and inherited <= only and both + inherited <= student
    ids = iter(range(examples))
    take = lambda n: {next(ids) for _ in range(n)}  # noqa: E731
    tbs, tb_rest, inh, t_rest = take(both), take(tb - both), take(inherited), take(only - inherited)
    b_only, s_only = take(baseline - tb), take(student - both - inherited)
    s = tbs | inh | s_only
    memorized = {"teacher": tbs | tb_rest | inh | t_rest, "baseline": tbs | tb_rest | b_only, "student": s}
    if flt:
        flt = dict(flt, student_memorized_before=student)
        memorized["student_filtered"] = set(sorted(s)[:flt["student_memorized_after"]])
    arms = None
    if hard is not None:  # the hard arm: the first `hard` of the baseline's windows, then the student's
        from kdstream.study.arms import arm_counts

        memorized["student_hard"] = set((sorted(memorized["baseline"]) + sorted(s - memorized["baseline"]))[:hard])
        arms = arm_counts(memorized, {"student_hard": memorized["student_hard"]})
    return {"arms": arms, "examples": examples, "memorized": {"teacher": teacher, "baseline": baseline, "student": student},
            "rate": {"teacher": teacher / examples, "baseline": baseline / examples, "student": student / examples},
            "student_over_baseline": student / baseline if baseline else float("nan"),
            "teacher_only": only, "teacher_only_inherited": inherited, "student_also_by_both": both,
            "classifier": cls, "filter": flt, "canaries": None, "windows": window_patterns(memorized, examples)}


COEFS = {"teacher_ppl": -0.3, "baseline_ppl": -0.4, "teacher_baseline_kl": -1.0, "zlib_entropy": -4.0}


def _cls(auc=(0.95, 0.96, 0.94, 0.95, 0.97), coefs=COEFS):
    """A seed's classifier figures with every split's values (5 repeats)."""
    return {"auc": {"mean": float(np.mean(auc)), "sd": float(np.std(auc, ddof=1))},
            "coefficients": dict(coefs),
            "repeats": {"auc": list(auc), "coefficients": {k: [v * (1 + 0.05 * (i - 2)) for i in range(len(auc))]
                                                           for k, v in coefs.items()}}}


def test_findings_verdicts_follow_the_numbers():
    from kdstream.study.summary import aggregate, findings

    flt = {"excluded": 10, "expected_recall": 0.9, "student_memorized_before": 8, "student_memorized_after": 0,
           "after_among_kept": 0, "before_among_kept": 0}
    agg = aggregate([_figs(60, 20, 10, 0, 10, _cls(), flt), _figs(64, 18, 8, 0, 8, _cls(), flt)])
    assert agg["memorized"]["student"]["mean"] == 9 and agg["memorized"]["student"]["sd"] == pytest.approx(np.sqrt(2))
    rows = findings(agg)
    verdicts = {r["finding"]: r["verdict"] for r in rows}
    assert set(verdicts.values()) == {"reproduced"}, verdicts
    assert all(r["interval"] and r["counts"] for r in rows), rows
    # the student memorizing more than the baseline, positive coefficients: not reproduced
    worse = _cls(coefs={k: -v for k, v in COEFS.items()})
    rows = findings(aggregate([_figs(30, 5, 8, 4, 2, worse, dict(flt, student_memorized_after=8))]))
    v = {r["finding"]: r["verdict"] for r in rows}
    assert v["memorized: teacher / CE baseline / KD student"] == "not reproduced"
    assert v["classifier coefficients (standardized)"] == "not reproduced"
    assert v["teacher-only memorized examples the student inherited"] == "not reproduced"  # 4 of 25
    assert v["student memorization after filtering, then re-distilling"] == "not reproduced"
    # nothing memorized: not testable rather than a verdict
    v = {r["finding"]: r["verdict"] for r in findings(aggregate([_figs(0, 0, 0)]))}
    assert all(x.startswith("not testable") for x in v.values()), v


def _verdicts(figs) -> dict:
    from kdstream.study.summary import aggregate, findings

    return {r["finding"]: r for r in findings(aggregate(figs))}


def test_a_verdict_is_direction_only_when_its_interval_straddles_the_criterion():
    """The same proportions on fewer windows: the figure still meets each criterion, but its
    interval no longer clears it."""
    gap, inherited = "memorized: teacher / CE baseline / KD student", "teacher-only memorized examples the student inherited"
    many = _verdicts([_figs(100, 80, 30, 0, 0, examples=1000)])
    few = _verdicts([_figs(10, 8, 3, 0, 0, examples=100)])
    assert many[gap]["verdict"] == "reproduced" and many[gap]["interval"][0] > 0
    assert few[gap]["verdict"] == "direction only"
    lo, hi = few[gap]["interval"]
    assert lo <= 0 < hi and few[gap]["counts"] == "baseline 8, student 3 of 100 windows"
    # 0 of 40 teacher-only windows inherited: under 10% with room; 0 of 12: the Wilson bound reaches 24%
    wide = _verdicts([_figs(60, 20, 4, 0, 0)])[inherited]
    assert wide["verdict"] == "reproduced" and wide["interval"][1] <= 0.10 and wide["counts"] == "0 of 40 teacher-only windows"
    narrow = _verdicts([_figs(20, 8, 4, 0, 0)])[inherited]
    assert narrow["verdict"] == "direction only" and narrow["interval"][1] == pytest.approx(0.243, abs=1e-3)
    # over seeds: two seeds that disagree leave only the direction
    split = _verdicts([_figs(40, 30, 2, 0, 0), _figs(40, 30, 28, 0, 0)])[gap]
    assert split["verdict"] == "direction only" and split["interval"][0] < 0


def test_too_few_windows_is_not_testable_with_the_count():
    v = _verdicts([_figs(3, 1, 1, 1, 0, teacher_only=3)])
    assert v["teacher memorizes more than the CE baseline"]["verdict"] == (
        "not testable (too few windows: 4 memorized by teacher or baseline, fewer than 5)")
    assert v["teacher-only memorized examples the student inherited"]["verdict"] == (
        "not testable (too few windows: 3 teacher-only, fewer than 5)")
    assert v["student ÷ baseline"]["verdict"].startswith("not testable (too few windows: 1 memorized by the baseline")


def test_intervals_are_the_same_every_time(tmp_path):
    from kdstream.options import options_dict
    from kdstream.study.config import StudyConfig
    from kdstream.study.summary import STUDY_MD, write_study_report

    figs = [_figs(60, 20, 10, 2, 6, _cls()), _figs(64, 18, 8, 1, 5, _cls())]
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in options_dict(StudyConfig()).items()}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_study_report(tmp_path / "a", cfg, figs)["findings"]
    assert write_study_report(tmp_path / "b", cfg, figs)["findings"] == first
    assert (tmp_path / "a" / STUDY_MD).read_text() == (tmp_path / "b" / STUDY_MD).read_text()
    assert "95% interval (counts)" in (tmp_path / "a" / STUDY_MD).read_text()


def test_two_seeds_are_reported_as_mean_and_sd(tmp_path):
    """write_study_report over two seeds' figures: every count becomes mean ± sd of the two, and
    study.md says so (what `reproduce --seeds 2` writes after its second seed)."""
    from kdstream.options import options_dict
    from kdstream.study.config import StudyConfig
    from kdstream.study.summary import STUDY_JSON, STUDY_MD, write_study_report

    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in options_dict(StudyConfig()).items()}
    result = write_study_report(tmp_path, cfg, [_figs(30, 20, 8), _figs(34, 18, 5)])
    got = json.loads((tmp_path / STUDY_JSON).read_text())["aggregate"]["memorized"]
    assert got == result["aggregate"]["memorized"]
    for role, values in (("teacher", [30, 34]), ("baseline", [20, 18]), ("student", [8, 5])):
        assert got[role]["values"] == values and got[role]["mean"] == pytest.approx(np.mean(values))
        assert got[role]["sd"] == pytest.approx(np.std(values, ddof=1))
    assert "2 seeds (mean ± sd)" in (tmp_path / STUDY_MD).read_text()


def test_inherited_row_says_how_many_were_lost_at_a_fork(tmp_path):
    """The forks `compare` counted (analysis/forks.py) are summed over the seeds into the inherited
    row, with the paragraph that explains them; a seed without the test leaves them out."""
    from kdstream.options import options_dict
    from kdstream.study.config import StudyConfig
    from kdstream.study.summary import STUDY_MD, aggregate, findings, write_study_report

    row = "teacher-only memorized examples the student inherited"
    forked = [dict(_figs(24, 20, 8, 3, teacher_only=4), teacher_only_at_fork=2, teacher_only_inherited_at_fork=2),
              dict(_figs(24, 20, 8, 1, teacher_only=4), teacher_only_at_fork=1, teacher_only_inherited_at_fork=0)]
    ours = {r["finding"]: r["ours"] for r in findings(aggregate(forked))}[row]
    assert ours == "4 of 8 (50.0%); 2 of them lost by the baseline at a fork between near-duplicates"
    untested = [forked[0], dict(forked[1], teacher_only_inherited_at_fork=None)]
    assert "fork" not in {r["finding"]: r["ours"] for r in findings(aggregate(untested))}[row]
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in options_dict(StudyConfig()).items()}
    write_study_report(tmp_path, cfg, forked)
    assert "A fork between near-duplicates:" in (tmp_path / STUDY_MD).read_text()
    write_study_report(tmp_path, cfg, [_figs(30, 20, 8, 3)])  # figures from before the test existed
    assert "fork" not in (tmp_path / STUDY_MD).read_text()


def test_the_hard_arm_is_reported_beside_the_kl_student_and_leaves_the_findings_as_they_were(tmp_path):
    from kdstream.options import options_dict
    from kdstream.study.config import StudyConfig
    from kdstream.study.summary import STUDY_MD, aggregate, findings, write_study_report

    plain = [_figs(60, 40, 10, 1, 6, examples=1000), _figs(64, 36, 8, 0, 5, examples=1000)]
    armed = [_figs(60, 40, 10, 1, 6, examples=1000, hard=30), _figs(64, 36, 8, 0, 5, examples=1000, hard=26)]
    agg = aggregate(armed)
    assert agg["arms"]["student_hard"]["memorized"]["values"] == [30, 26]
    assert agg["arms"]["student"]["memorized"]["values"] == [10, 8]
    assert agg["arms"]["student_hard"]["also_by_baseline"]["values"] == [30, 26]
    assert findings(agg) == findings(aggregate(plain))  # the arm moves no finding nor its interval
    assert "arms" not in aggregate(plain)
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in options_dict(StudyConfig(arms=("hard",))).items()}
    write_study_report(tmp_path, cfg, armed)
    md = (tmp_path / STUDY_MD).read_text()
    assert "| hard student (teacher top-1) | 28.0 ± 2.8 (30, 26) |" in md
    assert "the hard student memorizes more than the KL student, as predicted, and fewer than the CE baseline" in md


def test_arms_are_checked():
    from kdstream.study.config import StudyConfig

    with pytest.raises(KdError, match="arms \\['soft'\\]: each of hard at most once"):
        StudyConfig(arms=("soft",))
