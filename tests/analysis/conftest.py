"""Fixtures of the analysis tests: a tiny store written from a HF teacher's forward pass
(k = V, no vLLM), the features of its teacher and baseline, hand-built eval directories, and a
study (evals + features + classify) for `report`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_dirs import CHUNK, EXAMPLES, SEQ, study_eval, write_eval

from helpers import VOCAB, make_gpt_neox
from kdstream.analysis.classify_run import ClassifyRunOptions, run_classify
from kdstream.analysis.features_run import FeaturesOptions, run_features

# ---- a tiny store from a real forward pass ---------------------------------------------------

@pytest.fixture(scope="session")
def models(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("analysis_models")
    teacher = make_gpt_neox(d / "teacher", tokenizer, layers=1, hidden=64, heads=1, seed=3)
    baseline = make_gpt_neox(d / "baseline", tokenizer, layers=1, hidden=64, heads=1, seed=4)
    return teacher, baseline


@pytest.fixture(scope="session")
def store(tmp_path_factory, models, tokenizer, docs):
    """24 examples of 32 tokens, k = V = 512: top-k, target logprob and rank of the teacher."""
    from transformers import AutoModelForCausalLM

    from kdstream.data import pack_examples
    from kdstream.storage import StoreWriter
    from kdstream.text.tokenizers import tokenizer_fingerprint

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


@pytest.fixture(scope="session")
def scored(tmp_path_factory, models, store):
    """run_features for teacher and baseline -> (teacher out, teacher summary, baseline out, summary)."""
    d = tmp_path_factory.mktemp("analysis_features")
    opts = dict(logits_store=str(store), prefix_len=16, suffix_len=16, batch_size=5)
    t = run_features(FeaturesOptions(model=str(models[0]), out=str(d / "teacher"), **opts))
    b = run_features(FeaturesOptions(model=str(models[1]), out=str(d / "baseline"), **opts))
    return d / "teacher", t, d / "baseline", b


T = set(range(10))  # 0..9
B = set(range(5, 13))  # 5..12
S = {3, 8, 9, 10, 13}


@pytest.fixture
def evals(tmp_path):
    ids = np.arange(20)
    rng = np.random.default_rng(0)
    return (write_eval(tmp_path / "t", rng.permutation(ids), T), write_eval(tmp_path / "b", ids, B),
            write_eval(tmp_path / "s", rng.permutation(ids), S))



@pytest.fixture(scope="session")
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


