"""features, compare, classify and report on conversation evaluations: features over each
conversation's assistant targets (checked against the store's public read contract), the rest
run end to end on extract-eval directories of a model trained on 8 conversations' answers."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import last_json, one_line_error, run_cli
from kdstream.storage import open_store

pytestmark = pytest.mark.slow
TRAINED = 8


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, chat_store, chat_teacher_dir):
    """Evaluations and features of a store-verdict teacher and a CE model trained on 8 answers."""
    d = tmp_path_factory.mktemp("chat_analysis")
    (d / "exclude.txt").write_text("".join(f"{i}\n" for i in range(TRAINED, len(open_store(chat_store)))))
    run_cli("distill", "--logits-store", chat_store, "--model", chat_teacher_dir, "--loss", "ce", "--epochs", 60,
            "--batch-size", 8, "--lr", "3e-3", "--warmup-ratio", 0, "--exclude", d / "exclude.txt", "--out", d / "ce")
    common = ("--logits-store", chat_store, "--suffix-len", 8)
    run_cli("extract-eval", *common, "--method", "store", "--out", d / "eval_teacher")
    run_cli("extract-eval", *common, "--model", d / "ce", "--backend", "hf", "--dtype", "float32", "--features",
            "--out", d / "eval_ce")
    run_cli("features", "--model", chat_teacher_dir, "--logits-store", chat_store, "--suffix-len", 8,
            "--out", d / "features_teacher")
    return d


def test_features_are_over_the_assistant_targets(dirs, chat_store, chat_teacher_dir):
    import torch
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    feats = pq.read_table(dirs / "features_teacher" / "features.parquet").to_pandas().set_index("example_id")
    store = open_store(chat_store)
    assert len(feats) == len(store)
    model = GPTNeoXForCausalLM.from_pretrained(str(chat_teacher_dir), torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(chat_teacher_dir))
    for i in (0, 5, 17):
        item = store[i]
        ids, pos = item["input_ids"], item["positions"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor(ids[None])).logits[0].double(), -1).numpy()
        lp = logp[pos, ids[pos + 1]]
        row = feats.loc[int(item["example_id"])]
        assert row["ppl"] == pytest.approx(np.exp(-lp.mean()), rel=1e-4)
        assert row["teacher_ppl_from_store"] == pytest.approx(np.exp(-item["target_logprob"].astype(float).mean()), rel=1e-4)
        assert abs(row["teacher_kl"]) < 1e-3  # the teacher against its own fp32 rows
        text = tok.decode(ids[pos + 1].tolist(), skip_special_tokens=False)
        assert row["zlib_entropy"] == len(zlib.compress(text.encode())) and "<|im_end|>" in text
        first = pos[: np.argmax(np.diff(pos) > 1) + 1] if (np.diff(pos) > 1).any() else pos  # the first turn's rows
        assert row["suffix_ppl"] == pytest.approx(np.exp(-logp[first[:8], ids[first[:8] + 1]].mean()), rel=1e-4)


def test_extract_eval_features_rank_the_trained_answers_lowest(dirs):
    feats = pq.read_table(dirs / "eval_ce" / "features" / "features.parquet").to_pandas().set_index("example_id")
    r = pq.read_table(dirs / "eval_ce" / "results.parquet").to_pandas()
    assert set(r.loc[r["exact_match"], "example_id"]) <= set(range(TRAINED))
    assert feats.loc[: TRAINED - 1, "ppl"].max() < feats.loc[TRAINED:, "ppl"].min()


def test_compare_classify_and_report(dirs, tmp_path):
    t, ce = dirs / "eval_teacher", dirs / "eval_ce"
    feats = ("--teacher-features", dirs / "features_teacher", "--baseline-features", ce / "features")
    cmp = last_json(run_cli("compare", t, ce, ce, "--out", tmp_path / "cmp", *feats).stdout)
    assert cmp["memorized"]["baseline"] == cmp["memorized"]["student"] >= TRAINED - 1
    assert "conversations" in cmp["forks"]["skipped"]
    cls = last_json(run_cli("classify", "--student-eval", ce, *feats, "--repeats", 5, "--out", tmp_path / "cls").stdout)
    assert cls["positives"] == cmp["memorized"]["student"] and cls["auc"]["mean"] > 0.9
    rep = last_json(run_cli("report", "--teacher-eval", t, "--baseline-eval", ce, "--student-eval", ce, *feats,
                            "--classify", tmp_path / "cls", "--out", tmp_path / "rep").stdout)
    assert rep["notes"]["prefix_len"].startswith("not applicable: conversations")
    assert (tmp_path / "rep" / "report.md").read_text().count("| n/a | 8 |") == 3  # prefix_len n/a, suffix 8


def test_features_refusals(dirs, chat_store, chat_teacher_dir, teacher_dir, tmp_path):
    proc = run_cli("features", "--model", chat_teacher_dir, "--logits-store", chat_store, "--prefix-len", 20,
                   "--out", tmp_path / "f", check=False)
    assert "--prefix-len does not apply" in one_line_error(proc)
    proc = run_cli("features", "--model", teacher_dir, "--logits-store", chat_store, "--out", tmp_path / "f",
                   check=False)
    assert "another tokenizer" in one_line_error(proc)
    summary = json.loads((dirs / "features_teacher" / "summary.json").read_text())
    assert summary["prefix"] == "conversation" and summary["suffix_shorter"] == 0


def test_reference_kl_over_a_conversation_stores_target_rows(chat_store, chat_teacher_dir):
    """The fp32 conversation store against its own teacher: only its target rows count, each ≈ 0."""
    from kdstream.analysis.reference_kl import reference_kl

    store = open_store(chat_store)
    kl = reference_kl(str(chat_store), str(chat_teacher_dir), examples=4, device="cpu")
    assert kl["kl_positions"] == sum(len(store[i]["positions"]) for i in range(4))
    assert -1e-6 <= kl["kl_bucket_mean"] < 1e-4 and 0 <= kl["kl_full_mean"] < 10
