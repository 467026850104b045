"""extract-eval of a model with another tokenizer than the store's: prefix and suffix cut in the
teacher's tokens, the prefix re-tokenized for the model, exact match judged on the suffix's bytes
(extract/cross_tokenizer.py, metrics.byte_match_metrics)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import NUM_EXAMPLES, levenshtein, make_gpt_neox, one_line_error, run_cli, without_tokenizer
from kdstream.extract.cross_tokenizer import SKIP_REASONS, ByteJudge
from kdstream.extract.metrics import byte_match_metrics, edit_distance

TRAINED = 12  # the cross memorizer trains on the first 12 windows of its own packing of the corpus


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory, docs):
    """A byte-level BPE with another vocabulary (400), trained on the same documents."""
    from kdstream.text.tokenizers import train_bpe_tokenizer

    return train_bpe_tokenizer(docs, 400, tmp_path_factory.mktemp("other_tok"))


@pytest.fixture(scope="module")
def judge(tokenizer, other_tokenizer):
    return ByteJudge(tokenizer, other_tokenizer)


@pytest.fixture(scope="module")
def cross_memorizer(tmp_path_factory, other_tokenizer, corpus_file):
    """A 1-layer model with the other tokenizer, trained (CE, many epochs) on the start of the
    corpus packed with its own tokenizer: it has memorized the text of the store's first examples,
    which the teacher's tokenizer cuts elsewhere."""
    d = tmp_path_factory.mktemp("cross_memorizer")
    init = make_gpt_neox(d / "init", other_tokenizer, layers=1, vocab=400, seed=5)
    run_cli("distill", "--dataset", corpus_file, "--seq-len", 64, "--max-examples", TRAINED, "--model", init,
            "--loss", "ce", "--epochs", 60, "--batch-size", TRAINED, "--lr", "3e-3", "--warmup-ratio", 0,
            "--out", d / "model")
    return d / "model"


ARGS = ("--prefix-len", "16,24", "--suffix-len", 16, "--dtype", "float32")


@pytest.fixture(scope="module")
def cross_eval(tmp_path_factory, cross_memorizer, teacher_store):
    out = tmp_path_factory.mktemp("xeval") / "vllm"
    # no --teacher-tokenizer: the store carries its tokenizer (the HF-shard test passes the flag)
    run_cli("extract-eval", "--model", cross_memorizer, "--logits-store", teacher_store, *ARGS, "--out", out)
    return out


def _results(d):
    return pq.read_table(d / "results.parquet").to_pandas().set_index("example_id").sort_index()


# -- judging on bytes (no engine) --------------------------------------------------------------

def test_same_bytes_split_differently_is_a_match(tokenizer, other_tokenizer, judge):
    """The model's tokens split the suffix unlike the teacher's, with the same bytes: a match;
    one byte changed: none. Generating past the suffix's end (inside its last token) still matches."""
    text = " the tokenizer splits memorization differently"
    teacher = tokenizer(text, add_special_tokens=False)["input_ids"]
    model = other_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(teacher) != len(model), "the hand-built case needs two different splits"
    suffix = judge.teacher_text(teacher)
    assert suffix == text.encode() == judge.model_text(model)
    wrong = other_tokenizer(text.replace("differently", "differentlY"), add_special_tokens=False)["input_ids"]
    longer = other_tokenizer(text + " again", add_special_tokens=False)["input_ids"]
    m = byte_match_metrics([judge.model_text(model), judge.model_text(wrong), judge.model_text(longer)],
                           [suffix] * 3)
    assert m["exact"].tolist() == [True, False, True]
    assert m["prefix_match_len"].tolist() == [len(suffix), len(suffix) - 1, len(suffix)]
    assert m["edit_distance"].tolist() == [0, 1, 0]


def test_byte_metrics_on_hand_built_rows():
    m = byte_match_metrics([b"hello world!", b"help", None, b"hxllo", b""],
                           [b"hello world", b"hello", b"skipped", b"hello", b"abc"])
    assert m["exact"].tolist() == [True, False, False, False, False]
    assert m["prefix_match_len"].tolist() == [11, 3, -1, 1, 0]
    assert m["edit_distance"].tolist() == [0, 2, -1, 1, 3]  # "help" + a missing byte vs "hello"
    assert np.allclose(m["frac_matched"], [1.0, 0.6, np.nan, 0.8, 0.0], equal_nan=True)
    assert m["approx"].tolist() == [True, False, False, False, False]


def test_byte_edit_distance_equals_plain_levenshtein():
    """Rows of different lengths padded to one width give each row's own distance (the generated
    bytes cut to the suffix's length, a missing byte as an unequal one)."""

    rng = np.random.default_rng(0)
    suffix = [bytes(rng.integers(97, 100, size=rng.integers(1, 12)).tolist()) for _ in range(40)]
    generated = [bytes(rng.integers(97, 100, size=rng.integers(0, 14)).tolist()) for _ in range(40)]
    got = byte_match_metrics(generated, suffix)["edit_distance"]
    assert got.tolist() == [levenshtein(g[: len(s)].ljust(len(s), b"\0"), s) for g, s in zip(generated, suffix)]
    assert edit_distance(np.array([[1, 2]]), np.array([[2, 1]])).tolist() == [2]


def test_windows_skip_what_does_not_round_trip(tokenizer, other_tokenizer, judge, docs):
    """A prefix ending inside a multi-byte character, a model whose tokenizer lowercases, a prefix
    too long for the model's context: skipped with their reasons; the rest get the prefix's text
    in the model's tokens."""
    from text.tokenizers_for_alignment import lowercasing_tokenizer  # tests/text/

    ids = np.array(tokenizer(" café au lait, naïve", add_special_tokens=False)["input_ids"])
    pieces = [judge.teacher_text([i]) for i in ids]
    cut = next(k for k, b in enumerate(pieces) if b and b[0] & 0xC0 == 0x80)  # a token that starts mid-character
    whole = cut + 1  # " café" | " au"…: both sides whole characters
    assert judge.windows(ids[None, :cut], ids[None, cut : cut + 3], context=None).skip == ["invalid_utf8"]
    assert judge.windows(ids[None, : cut - 1], ids[None, cut - 1 : cut + 1], context=None).skip[0] is None
    assert judge.windows(ids[None, : cut - 1], ids[None, cut - 1 : cut], context=None).skip == ["invalid_utf8"]
    w = judge.windows(np.stack([ids[:whole]]), np.stack([ids[whole : whole + 3]]), context=None)
    assert judge.model_text(w.prompts[0]) == judge.teacher_text(ids[:whole]) == " café".encode()
    assert w.suffix[0] == judge.teacher_text(ids[whole : whole + 3]) and w.judged.tolist() == [0]
    assert w.max_new(w.judged).tolist() == [len(w.suffix[0])]
    tight = judge.windows(ids[None, :whole], ids[None, whole : whole + 3],
                          context=len(w.prompts[0]) + len(w.suffix[0]) - 1)
    assert tight.skip == ["context"]
    lower = ByteJudge(tokenizer, lowercasing_tokenizer(docs, 300))
    ids = np.array(tokenizer(" The Tokenizer", add_special_tokens=False)["input_ids"])
    assert lower.windows(ids[None, :2], ids[None, 2:], context=None).skip == ["no_round_trip"]


def test_skipped_examples_in_the_tables_and_summary(tmp_path):
    """A byte-judged prefix length with a skipped example: it stays in results.parquet (exact and
    approx false, numbers null, its reason), and the summary counts it by reason."""
    from kdstream.extract.results import prefix_table, sweep_table, write_eval

    suffix, gen = [b"abc", None, b"xyz"], [b"abcd", None, b"xyq"]
    per = {"generate": {**byte_match_metrics(gen, suffix), "generated_ids": [np.array([5, 6]), None, np.array([7])],
                        "generated_bytes": gen, "suffix_bytes": suffix,
                        "skip_reason": [None, "invalid_utf8", None]}}
    truth = np.arange(6).reshape(3, 2)
    tables = {8: prefix_table(np.array([0, 1, 2]), truth, per)}
    summary = write_eval(tmp_path, tables[8], sweep_table(tables), {}, ["generate"])
    t = _results(tmp_path)
    assert t["exact_match"].tolist() == [True, False, False] and t["approx_match"].tolist() == [True, False, False]
    assert t["prefix_match_len"].isna().tolist() == [False, True, False]
    assert t["edit_distance"].isna().tolist() == [False, True, False] and t.loc[2, "edit_distance"] == 1
    assert t["skip_reason"].isna().tolist() == [True, False, True] and t.loc[1, "skip_reason"] == "invalid_utf8"
    assert t.loc[0, "generated_bytes"] == b"abcd" and list(t.loc[0, "generated_ids"]) == [5, 6]
    assert summary["skipped_examples"] == {"invalid_utf8": 1, "no_round_trip": 0, "empty": 0, "context": 0}
    assert summary["judged"] == 2 and summary["memorized"] == 1 and summary["examples"] == 3
    assert summary["by_prefix_len"] == [{"prefix_len": 8, "examples": 3, "memorized": 1, "rate": 1 / 3, "skipped": 1}]
    assert "suffix_bytes" not in pq.read_table(tmp_path / "prefix_sweep.parquet").column_names


# -- end to end through the CLI -------------------------------------------------------------------

@pytest.mark.slow
def test_cross_tokenizer_extraction_end_to_end(cross_eval, tokenizer, judge):
    """vLLM, two prefix lengths, chosen automatically: the mode and counts in the summary, every
    judged row's suffix bytes are the teacher tokenizer's decode of its suffix ids, and the verdict
    is "the model's generated bytes start with them"."""
    summary = json.loads((cross_eval / "summary.json").read_text())
    assert summary["mode"] == "cross_tokenizer" and summary["match_on"] == "bytes"
    assert summary["examples"] == NUM_EXAMPLES and set(summary["skipped_examples"]) == set(SKIP_REASONS)
    assert summary["judged"] + sum(summary["skipped_examples"].values()) == NUM_EXAMPLES
    assert summary["judged"] > 0 and [r["prefix_len"] for r in summary["by_prefix_len"]] == [16, 24]
    t = _results(cross_eval)
    assert summary["memorized"] == int(t["exact_match"].sum())
    judged = t[t["skip_reason"].isna()]
    for _, row in judged.iterrows():
        assert row["suffix_bytes"] == tokenizer.decode(list(row["suffix_ids"])).encode()
        assert row["generated_bytes"] == judge.model_text(row["generated_ids"])
        assert len(row["generated_ids"]) == len(row["suffix_bytes"])  # the bound: one token per byte
        assert row["exact_match"] == row["generated_bytes"].startswith(row["suffix_bytes"])
        assert row["prefix_match_len"] <= len(row["suffix_bytes"])
    assert not t.loc[t["skip_reason"].notna(), "exact_match"].any()
    opts = (cross_eval / "options.yaml").read_text()
    assert "teacher_tokenizer:" in opts and "match: auto" in opts


@pytest.mark.slow
def test_the_cross_memorizer_reproduces_the_text_it_was_trained_on(cross_eval):
    """Not a vacuous verdict: the model trained on the corpus's start, in its own tokens, gives
    back byte-exact suffixes of the store's first examples and none of the later ones."""
    t = _results(cross_eval)
    memorized = set(t.index[t["exact_match"]])
    assert memorized, "the cross memorizer reproduced nothing: the test model is too weak"
    assert max(memorized) < TRAINED, f"examples past the trained text reproduced: {memorized}"


@pytest.mark.slow
def test_hf_shards_of_the_corpus_merge_to_the_vllm_verdicts(cross_eval, cross_memorizer, corpus_file, teacher_dir,
                                                            tmp_path):
    """The store's examples packed from the corpus with --teacher-tokenizer (--dataset), in two
    HF shards (prompts grouped by length), merged: the vLLM run's verdicts, counts and mode."""
    args = ("extract-eval", "--model", cross_memorizer, "--dataset", corpus_file, "--seq-len", 64, "--max-examples",
            NUM_EXAMPLES, "--teacher-tokenizer", teacher_dir, "--backend", "hf", "--batch-size", 5, *ARGS,
            "--num-workers", 2)
    for i in range(2):
        run_cli(*args, "--worker-index", i, "--out", tmp_path / f"w{i}")
    run_cli("eval", "merge", tmp_path / "w0", tmp_path / "w1", "--out", tmp_path / "merged")
    merged = json.loads((tmp_path / "merged" / "summary.json").read_text())
    single = json.loads((cross_eval / "summary.json").read_text())
    assert merged["backend"] == "hf"
    for key in ("mode", "match_on", "examples", "memorized", "judged", "skipped_examples", "by_prefix_len"):
        assert merged[key] == single[key], key
    v, h = _results(cross_eval), _results(tmp_path / "merged")
    assert (v["skip_reason"].fillna("") == h["skip_reason"].fillna("")).all()
    assert (v["exact_match"] == h["exact_match"]).all()
    assert (v["prefix_match_len"].fillna(-1) == h["prefix_match_len"].fillna(-1)).all()


@pytest.mark.slow
def test_forced_byte_judge_agrees_with_tokens_on_the_same_tokenizer(tmp_path, teacher_dir, teacher_store, tokenizer):
    """The teacher on its own store, judged on tokens and (--match bytes) on bytes, HF backend:
    the same exact matches, and the byte match reaches at least the bytes of the tokens matched."""
    args = ("extract-eval", "--model", teacher_dir, "--logits-store", teacher_store, "--backend", "hf", *ARGS)
    run_cli(*args, "--out", tmp_path / "tokens")
    run_cli(*args, "--match", "bytes", "--out", tmp_path / "bytes")
    tok, byt = _results(tmp_path / "tokens"), _results(tmp_path / "bytes")
    summary = json.loads((tmp_path / "bytes" / "summary.json").read_text())
    assert summary["mode"] == "same_tokenizer" and summary["match_on"] == "bytes"
    assert json.loads((tmp_path / "tokens" / "summary.json").read_text())["match_on"] == "tokens"
    same = ByteJudge(tokenizer, tokenizer)
    compared = 0
    for i, row in byt[byt["skip_reason"].isna()].iterrows():
        truth, gen, k = list(tok.loc[i, "suffix_ids"]), list(tok.loc[i, "generated_ids"]), tok.loc[i, "prefix_match_len"]
        if list(row["generated_ids"][: len(gen)]) != gen:
            continue  # the re-tokenized prompt differs from the store's ids at a window edge
        compared += 1
        assert row["exact_match"] == tok.loc[i, "exact_match"]
        assert row["prefix_match_len"] >= len(same.teacher_text(truth[:k]))
    assert compared >= NUM_EXAMPLES // 2


def test_cross_tokenizer_refusals(tmp_path, teacher_store, teacher_dir, other_tokenizer):
    """One-line errors, exit 2, nothing written: no way to get the teacher's tokenizer, a wrong
    one, and options a cross-tokenizer run cannot honour (those in-process: the same KdError the
    CLI prints as its one line)."""
    from kdstream.errors import KdError
    from kdstream.extract.run import ExtractOptions, run_extract_eval

    other = make_gpt_neox(tmp_path / "other", other_tokenizer, layers=1, vocab=400)
    old = without_tokenizer(teacher_store, tmp_path / "old.zarr")  # a store written before stores carried one
    old_base = ["extract-eval", "--model", other, "--logits-store", old, "--out", tmp_path / "out"]
    err = one_line_error(run_cli(*old_base, check=False))
    assert "carries no tokenizer" in err and "--teacher-tokenizer DIR" in err
    base = ["extract-eval", "--model", other, "--logits-store", teacher_store, "--out", tmp_path / "out"]
    assert "is not the tokenizer of" in one_line_error(run_cli(*base, "--teacher-tokenizer", other, check=False))
    err = one_line_error(run_cli(*base, "--teacher-tokenizer", teacher_dir, "--method", "fast", check=False))
    assert "--method fast compares token ids" in err
    kw = dict(model=str(other), logits_store=str(teacher_store), out=str(tmp_path / "out"))
    cases = {
        (("teacher_tokenizer", str(teacher_dir)), ("match", "tokens")): "--match tokens needs",
        (("teacher_tokenizer", str(teacher_dir)), ("features", True)): "--features scores the model on the store's",
        (("match", "bytes"), ("method", "both")): "--match bytes judges greedy decoding",
        (("match", "characters"),): "--match 'characters' is unknown",
        (("model", None), ("method", "store"), ("teacher_tokenizer", str(teacher_dir))):
            "--method store reads the teacher's own verdicts",
    }
    for extra, message in cases.items():
        with pytest.raises(KdError, match=message):
            run_extract_eval(ExtractOptions(**{**kw, **dict(extra)}))
    assert not (tmp_path / "out").exists()
