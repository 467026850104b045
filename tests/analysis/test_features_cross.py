"""`kdstream features` of a model whose tokenizer differs from the store's (features_cross.py), and
`classify` reading byte-based features from it (a cross-tokenizer baseline)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from analysis_dirs import write_eval

from helpers import make_gpt_neox, one_line_error, run_cli, without_tokenizer
from kdstream.analysis.classify_run import ClassifyRunOptions, classification_table, run_classify
from kdstream.analysis.features_run import FeaturesOptions, run_features
from kdstream.analysis.files import FEATURE_COLUMNS, LLR_COLUMN


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, docs):
    """A model with a SentencePiece-style tokenizer (another kind and vocabulary than the store's)."""
    from kdstream.text.tokenizers import train_sentencepiece_style_tokenizer

    d = tmp_path_factory.mktemp("other_model")
    tok = train_sentencepiece_style_tokenizer(docs, 400)
    tok.save_pretrained(str(d / "tok"))
    return make_gpt_neox(d / "model", tok, layers=1, hidden=64, heads=1, vocab=len(tok), seed=5)


@pytest.fixture(scope="module")
def cross_features(tmp_path_factory, other_model, teacher_store, teacher_dir):
    d = tmp_path_factory.mktemp("cross_features")
    opts = dict(logits_store=str(teacher_store), prefix_len=16, suffix_len=16, batch_size=5, max_examples=16)
    b = run_features(FeaturesOptions(model=str(other_model), out=str(d / "baseline"), **opts))
    t = run_features(FeaturesOptions(model=str(teacher_dir), out=str(d / "teacher"), **opts))
    return d / "teacher", t, d / "baseline", b


def test_features_across_tokenizers(cross_features, other_model, teacher_store):
    """Bits per byte and the per-byte log-likelihood ratio equal a direct computation on one example."""
    from transformers import AutoModelForCausalLM

    from kdstream.storage import open_store
    from kdstream.storage.tokenizer_files import store_tokenizer
    from kdstream.text.align import Aligner
    from kdstream.text.tokenizers import load_tokenizer

    _, t_sum, b_dir, b_sum = cross_features
    frame = pq.read_table(b_dir / "features.parquet").to_pandas()
    assert list(frame.columns) == [*FEATURE_COLUMNS, LLR_COLUMN] and len(frame) == 16
    assert b_sum["mode"] == "cross_tokenizer" and "mode" not in t_sum  # the same-tokenizer summary is unchanged
    assert frame["suffix_ppl"].isna().all() and frame["teacher_kl"].isna().all()
    judged = frame["bits_per_byte"].notna()
    assert judged.sum() == 16 - b_sum["unaligned"] >= 12
    assert np.isfinite(frame.loc[judged, LLR_COLUMN]).all()
    # a random model is worse than the trained teacher on the text: the ratio is positive
    assert (frame.loc[judged, LLR_COLUMN] > 0).mean() > 0.9

    store = open_store(str(teacher_store))
    rows = store.read(0, 16, ("input_ids", "target_logprob"))
    i = int(np.flatnonzero(judged.to_numpy())[0])
    a = Aligner(store_tokenizer(store), load_tokenizer(other_model)).align(rows["input_ids"][i])
    net = AutoModelForCausalLM.from_pretrained(str(other_model), dtype=torch.float32).eval()
    with torch.no_grad():
        lp = net(input_ids=torch.as_tensor(a.student_ids)[None]).logits[0, :-1].double().log_softmax(-1)
    own = lp.gather(-1, torch.as_tensor(a.student_ids[1:])[:, None])[:, 0].numpy()  # (L_s-1,)
    spans = a.student_spans[1:]
    np.testing.assert_allclose(frame["bits_per_byte"][i], -own.sum() / np.log(2) / (spans[:, 1] - spans[:, 0]).sum(),
                               rtol=1e-4)
    # usable chunks: teacher minus model log-likelihood, by hand (a token-by-token loop)
    t_lp, model_lp, nbytes = 0.0, 0.0, 0
    for c in np.flatnonzero(a.usable):
        ta, tb = a.teacher_bounds[c]
        sa, sb = a.student_bounds[c]
        t_lp += rows["target_logprob"][i][ta - 1 : tb - 1].astype(np.float64).sum()
        model_lp += own[sa - 1 : sb - 1].sum()
        nbytes += a.byte_bounds[c + 1] - a.byte_bounds[c]
    np.testing.assert_allclose(frame[LLR_COLUMN][i], (t_lp - model_lp) / np.log(2) / nbytes, rtol=1e-4)


def test_classify_reads_byte_features_for_a_cross_baseline(cross_features, tmp_path):
    t_dir, _, b_dir, _ = cross_features
    tf = pq.read_table(t_dir / "features.parquet").to_pandas()
    bf = pq.read_table(b_dir / "features.parquet").to_pandas()
    ids = tf["example_id"].to_numpy()
    memorized = set(ids[np.argsort(tf["bits_per_byte"].to_numpy())[:6]].tolist())  # the teacher's easiest texts
    student = write_eval(tmp_path / "student", ids, memorized)
    table, labels = classification_table(student, t_dir, b_dir)
    assert list(table.columns) == ["example_id", "teacher_bpb", "baseline_bpb", "teacher_baseline_llr", "zlib_entropy"]
    kept = bf["bits_per_byte"].notna().to_numpy()
    np.testing.assert_array_equal(table["example_id"], ids[kept])  # unaligned examples are left out
    np.testing.assert_array_equal(labels, np.isin(ids[kept], list(memorized)))
    np.testing.assert_allclose(table["teacher_baseline_llr"], bf[LLR_COLUMN][kept])
    result = run_classify(ClassifyRunOptions(student_eval=str(student), teacher_features=str(t_dir),
                                             baseline_features=str(b_dir), out=str(tmp_path / "cls"), repeats=4,
                                             filter=True, target_recall=0.8))
    assert result["features"] == ["teacher_bpb", "baseline_bpb", "teacher_baseline_llr", "zlib_entropy"]
    assert set(result["coefficients"]) == set(result["features"]) and result["filter"]["flagged"] > 0
    saved = json.loads((tmp_path / "cls" / "classification.json").read_text())
    assert saved["features"] == result["features"]


def test_features_across_tokenizers_needs_the_store_s_tokenizer(other_model, teacher_store, tmp_path):
    old = without_tokenizer(teacher_store, tmp_path / "old.zarr")
    err = one_line_error(run_cli("features", "--model", other_model, "--logits-store", old, "--out", tmp_path / "f",
                                 "--prefix-len", 8, "--suffix-len", 8,
                                 check=False))
    assert "carries no tokenizer to align with" in err
    assert not (tmp_path / "f").exists()
