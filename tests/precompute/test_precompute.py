"""The real teacher pass (vLLM on a tiny GPT-NeoX) against an independent HF forward pass."""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import NUM_EXAMPLES, SEQ_LEN, TOP_K, VOCAB, precompute_args, run_cli
from kdstream.storage import open_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_logprobs(teacher_dir, teacher_store):
    """Full-vocabulary fp32 log-probs from transformers for every stored example: (S, L, V)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32).eval()
    ids = torch.from_numpy(open_store(str(teacher_store))[:]["input_ids"])
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits.float(), -1).numpy()


def test_store_layout_and_provenance(teacher_store, teacher_dir):
    store = open_store(str(teacher_store))
    assert len(store) == NUM_EXAMPLES and store.seq_len == SEQ_LEN and store.k == TOP_K
    a = store.attrs
    assert a["complete"] is True and a["format_version"] == 4 and a["targets"] == "topk"
    assert a["vocab_size"] == VOCAB and a["tokenizer"]["vocab_size"] == VOCAB
    assert a["teacher"]["config_sha256"] and a["teacher"]["weights_fingerprint"]
    assert a["engine"]["name"] == "vllm" and a["engine"]["version"].startswith("0.")
    assert len(a["corpus"]["fingerprint"]) == 64 and a["options"]["top_k"] == TOP_K
    row = store[0]
    assert row["input_ids"].shape == (SEQ_LEN,) and row["topk_logprobs"].shape == (SEQ_LEN - 1, TOP_K)


def test_rows_align_target_logprob_matches_hf(teacher_store, hf_logprobs):
    """Row t predicts input_ids[t+1]; its target_logprob is HF's logprob of exactly that token."""
    rows = open_store(str(teacher_store))[:]
    ids = rows["input_ids"]
    hf_target = np.take_along_axis(hf_logprobs[:, :-1], ids[:, 1:, None], -1)[..., 0]  # (S, L-1)
    np.testing.assert_allclose(rows["target_logprob"], hf_target, atol=1e-3)  # stored as fp32
    # rank 1 means the true token is the teacher's argmax
    hf_rank = (hf_logprobs[:, :-1] > hf_target[..., None]).sum(-1) + 1
    assert np.mean(rows["target_rank"] == hf_rank) > 0.99


def test_topk_agrees_with_hf(teacher_store, hf_logprobs):
    rows = open_store(str(teacher_store))[:]
    ref = hf_logprobs[:, :-1]  # (S, L-1, V)
    ref_ids = np.argsort(-ref, axis=-1, kind="stable")[..., :TOP_K]
    # decoded logprobs of the stored ids equal HF's values for those ids within the encoding's
    # stated bound (+1e-3 of vLLM vs HF float noise), in descending order
    bound = open_store(str(teacher_store)).attrs["encoding"]["max_abs_error"]
    assert 0 < bound < 0.01  # qdelta, format version 3: 1/52 / 2 nats
    np.testing.assert_allclose(rows["topk_logprobs"], np.take_along_axis(ref, rows["topk_ids"], -1),
                               rtol=0, atol=bound + 1e-3)
    assert np.all(np.diff(rows["topk_logprobs"], axis=-1) <= 1e-6)
    # ids equal except where two candidates are tied within float noise
    differ = rows["topk_ids"] != ref_ids
    gaps = np.abs(np.take_along_axis(ref, rows["topk_ids"], -1) - np.take_along_axis(ref, ref_ids, -1))
    assert np.all(gaps[differ] < 1e-4), "a differing top-k id that is not a numerical tie"
    assert differ.mean() < 0.01


def test_same_command_same_store(tmp_path, teacher_store, teacher_dir, corpus_file):
    again = tmp_path / "again.zarr"
    run_cli(*precompute_args(teacher_dir, corpus_file, again))
    a, b = open_store(str(teacher_store))[:], open_store(str(again))[:]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_killed_precompute_never_leaves_a_complete_store(tmp_path, teacher_dir, corpus_file):
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "kdstream", *map(str, precompute_args(teacher_dir, corpus_file, out))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "zarr.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "zarr.json").exists(), "the store was never created"
    failed = run_cli("distill", "--model", teacher_dir, "--logits-store", out, "--out", tmp_path / "s", check=False)
    assert failed.returncode == 2 and "incomplete" in failed.stderr and "Traceback" not in failed.stderr


def test_top_k_above_vocabulary_is_refused_before_the_engine_starts(tmp_path, teacher_dir, corpus_file):
    args = precompute_args(teacher_dir, corpus_file, tmp_path / "x.zarr")
    args[args.index("--top-k") + 1] = VOCAB + 1
    start = time.time()
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: --top-k") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists() and time.time() - start < 60


def test_full_vocabulary_store_gives_the_dense_kd_loss(tmp_path, teacher_dir, corpus_file, hf_logprobs):
    """With k = V the stored top-k + tail loss equals dense KL against the teacher's full logits."""
    from kdstream.distill.losses import dense_kd_loss, kd_loss

    out = tmp_path / "full.zarr"
    args = precompute_args(teacher_dir, corpus_file, out)
    args[args.index("--top-k") + 1] = VOCAB
    args[args.index("--max-examples") + 1] = 3
    run_cli(*args)
    rows = open_store(str(out))[:]
    torch.manual_seed(0)
    student = torch.randn(3 * (SEQ_LEN - 1), VOCAB, dtype=torch.float64)  # (N, V)
    teacher = torch.from_numpy(hf_logprobs[:3, :-1]).reshape(-1, VOCAB).double()  # (N, V)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        sparse = kd_loss(student, torch.from_numpy(rows["topk_ids"]).reshape(-1, VOCAB),
                         torch.from_numpy(rows["topk_logprobs"]).reshape(-1, VOCAB).double(), kind=kind, temperature=2.0)
        dense = dense_kd_loss(student, teacher, kind=kind, temperature=2.0)
        assert sparse.item() == pytest.approx(dense.item(), rel=1e-3, abs=1e-4), kind


def test_sampled_targets_are_drawn_from_the_teachers_top_k(tmp_path, teacher_store, teacher_dir, corpus_file):
    """--targets sampled: N draws per position from vLLM's top-k + tail; every drawn id is one of
    the top-k of the same teacher pass, counts + tail draws = N, same seed same draws."""
    out = tmp_path / "sampled.zarr"
    run_cli(*precompute_args(teacher_dir, corpus_file, out, "--targets", "sampled", "--samples", "16"))
    store = open_store(str(out))
    assert store.attrs["targets"] == "sampled" and store.attrs["encoding"]["samples"] == 16
    assert store.k == min(16, TOP_K) and store.attrs["source_top_k"] == TOP_K
    raw = store.read(0, len(store), ("sample_ids", "sample_counts", "sample_tail_count", "target_logprob"))
    assert np.all(raw["sample_counts"].sum(-1) + raw["sample_tail_count"] == 16)
    ref = open_store(str(teacher_store))[:]
    drawn = raw["sample_counts"] > 0
    in_topk = (raw["sample_ids"][..., :, None] == ref["topk_ids"][..., None, :]).any(-1)
    assert np.all(in_topk[drawn])
    np.testing.assert_allclose(raw["target_logprob"], ref["target_logprob"], atol=1e-4)
    # the top-k view the trainer reads: a distribution whose tail is the tail draws' share
    view = store[:]
    np.testing.assert_allclose(np.exp(view["topk_logprobs"].astype(np.float64)).sum(-1) + view["tail_mass"], 1, atol=1e-6)
