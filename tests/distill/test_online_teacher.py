"""distill --teacher: online dense KD, the baseline offline stores are judged against. A store
that keeps every token (k = V, fp32) must train exactly as the online teacher does."""
from __future__ import annotations

import json

import pytest

from helpers import NUM_EXAMPLES, SEQ_LEN, VOCAB, losses, one_line_error, precompute_args, run_cli


@pytest.fixture(scope="module")
def full_store(tmp_path_factory, teacher_dir, corpus_file):
    """Every token of the vocabulary at every position, fp32: the dense distribution, stored."""
    out = tmp_path_factory.mktemp("full") / "full.zarr"
    args = precompute_args(teacher_dir, corpus_file, out, "--backend", "hf", "--device", "cpu",
                           "--logprob-encoding", "fp32")
    args[args.index("--top-k") + 1] = VOCAB
    run_cli(*args)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("loss,temperature,chunk", [("forward_kl", 2.0, "auto"), ("jsd", 1.0, "0")])
def test_a_k_equals_v_store_trains_as_the_online_teacher(full_store, teacher_dir, corpus_file, student_init_dir,
                                                         tmp_path, loss, temperature, chunk):
    common = ["distill", "--model", student_init_dir, "--loss", loss, "--temperature", temperature, "--epochs", 1,
              "--batch-size", 8, "--alpha-ce", 0.1, "--loss-chunk", chunk, "--eval-examples", 4]
    run_cli(*common, "--logits-store", full_store, "--out", tmp_path / "store")
    run_cli(*common, "--teacher", teacher_dir, "--dataset", corpus_file, "--seq-len", SEQ_LEN,
            "--max-examples", NUM_EXAMPLES, "--out", tmp_path / "online")
    a, b = losses(tmp_path / "store"), losses(tmp_path / "online")
    assert len(a) == len(b) == 3  # (24 - 4 held out) / 8 → 3 steps
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5, (a, b)
    ea, eb = (json.loads((tmp_path / d / "train_summary.json").read_text())["final_eval_loss"] for d in ("store", "online"))
    assert abs(ea - eb) <= 1e-5


def test_bad_online_teacher_options_are_one_line_errors(teacher_dir, corpus_file, student_init_dir, docs, tmp_path):
    from helpers import make_gpt_neox
    from kdstream.text.tokenizers import train_bpe_tokenizer

    base = ["distill", "--model", student_init_dir, "--out", tmp_path / "out", "--epochs", 1]
    err = one_line_error(run_cli(*base, "--teacher", teacher_dir, "--logits-store", "x.zarr", check=False))
    assert "pass exactly one of --logits-store" in err or "pass --dataset" in err
    err = one_line_error(run_cli(*base, "--teacher", teacher_dir, "--dataset", corpus_file, "--loss", "ce", check=False))
    assert "online KD takes" in err
    other = make_gpt_neox(tmp_path / "other", train_bpe_tokenizer(docs[:40], 400, tmp_path / "tok"), vocab=512)
    err = one_line_error(run_cli(*base, "--teacher", other, "--dataset", corpus_file, check=False))
    assert "the teacher's tokenizer" in err and "differs from the student's" in err
    assert not (tmp_path / "out").exists()
