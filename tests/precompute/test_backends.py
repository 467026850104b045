"""precompute-logits on both teacher backends: vLLM and HF transformers write the same store.

Two real runs of the CLI on the session's tiny GPT-NeoX (fp32 weights, fp32 logprob encoding so
only float noise separates them), shared by the module; the HF one runs with vLLM made
unimportable, as on a machine without it.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import NUM_EXAMPLES, SEQ_LEN, TOP_K, precompute_args, run_cli
from kdstream.storage import open_store

pytestmark = pytest.mark.slow

TIE = 1e-4  # logprob gap below which two candidates' order is float noise
BATCHED_TOKENS = 256  # --max-num-batched-tokens: below one call's 10 × 64 tokens, so prompts are split


@pytest.fixture(scope="module")
def vllm_store(tmp_path_factory, teacher_dir, corpus_file):
    out = tmp_path_factory.mktemp("backends") / "vllm.zarr"
    run_cli(*precompute_args(teacher_dir, corpus_file, out, "--backend", "vllm", "--logprob-encoding", "fp32",
                             "--max-num-batched-tokens", BATCHED_TOKENS))
    return out


@pytest.fixture(scope="module")
def hf_store(tmp_path_factory, teacher_dir, corpus_file):
    """--backend hf in a process where ``import vllm`` fails."""
    tmp = tmp_path_factory.mktemp("backends_hf")
    (tmp / "blocked").mkdir()
    (tmp / "blocked" / "vllm.py").write_text("raise ImportError('vllm is blocked in this test')\n")
    path = os.pathsep.join(p for p in (str(tmp / "blocked"), os.environ.get("PYTHONPATH")) if p)
    out = tmp / "hf.zarr"
    args = precompute_args(teacher_dir, corpus_file, out, "--backend", "hf", "--logprob-encoding", "fp32")
    proc = subprocess.run([sys.executable, "-m", "kdstream", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def reference(teacher_dir, vllm_store):
    """Full-vocabulary fp32 log-probs from a plain transformers forward: (S, L-1, V)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32).eval()
    ids = torch.from_numpy(open_store(str(vllm_store))[:]["input_ids"])
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits.float(), -1)[:, :-1].numpy()


def test_vllm_and_hf_write_the_same_store(vllm_store, hf_store, reference):
    v, h = open_store(str(vllm_store))[:], open_store(str(hf_store))[:]
    assert v.keys() == h.keys()
    for key in ("input_ids", "example_id", "doc_index"):
        np.testing.assert_array_equal(v[key], h[key], err_msg=key)
    assert v["topk_ids"].shape == h["topk_ids"].shape == (NUM_EXAMPLES, SEQ_LEN - 1, TOP_K)
    # values by rank: equal within float noise whatever the order of tied ids
    np.testing.assert_allclose(v["topk_logprobs"], h["topk_logprobs"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(v["target_logprob"], h["target_logprob"], rtol=0, atol=1e-3)
    # ids: equal except where the two candidates at that rank are tied
    differ = v["topk_ids"] != h["topk_ids"]
    gap = np.abs(np.take_along_axis(reference, v["topk_ids"], -1) - np.take_along_axis(reference, h["topk_ids"], -1))
    assert np.all(gap[differ] < TIE), "a differing top-k id that is not a numerical tie"
    assert differ.mean() < 0.01
    # ranks: equal except where another vocabulary entry ties with the true token
    target = np.take_along_axis(reference, v["input_ids"][:, 1:, None], -1)  # (S, L-1, 1)
    tied = (np.abs(reference - target) < TIE).sum(-1) > 1  # (S, L-1): the token itself plus another
    assert np.all(v["target_rank"][~tied] == h["target_rank"][~tied])
    assert h["target_rank"].min() == 1 and np.mean(h["target_rank"] == 1) > 0  # 1-based, argmax hits exist


def test_each_store_records_its_backend_and_options(vllm_store, hf_store):
    import transformers

    v, h = open_store(str(vllm_store)).attrs, open_store(str(hf_store)).attrs
    assert v["engine"]["name"] == "vllm" and v["options"]["backend"] == "vllm"
    assert v["options"]["engine"]["max_num_batched_tokens"] == BATCHED_TOKENS
    assert h["engine"]["name"] == "hf" and h["engine"]["version"] == transformers.__version__
    assert h["engine"]["dtype"] == "float32" and h["options"]["backend"] == "hf"
    assert h["options"]["engine"]["max_num_batched_tokens"] is None
    assert v["complete"] is True and h["complete"] is True


def test_hf_chunked_head_equals_one_chunk(teacher_dir, vllm_store):
    """The LM head over 7 positions at a time (chunks straddle examples) = over all at once: the
    same ids and ranks; logprobs equal to float rounding (BLAS sums a 7-row and a 252-row matmul in
    different orders: ~3e-6 apart here, not bit for bit)."""
    from kdstream.precompute.hf_backend import HfTeacher

    ids = open_store(str(vllm_store))[:4]["input_ids"]  # (4, L): 252 positions
    whole = HfTeacher(str(teacher_dir), TOP_K, "float32", chunk_positions=10**6).score(ids)
    chunked = HfTeacher(str(teacher_dir), TOP_K, "float32", chunk_positions=7).score(ids)
    assert whole["topk_ids"].dtype == np.int64 and whole["topk_logprobs"].dtype == np.float32
    assert whole["target_logprob"].shape == whole["target_rank"].shape == (4, SEQ_LEN - 1)
    for key in ("topk_logprobs", "target_logprob"):
        np.testing.assert_allclose(chunked[key], whole[key], rtol=0, atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(chunked["topk_ids"], whole["topk_ids"])
    np.testing.assert_array_equal(chunked["target_rank"], whole["target_rank"])


def test_unknown_backend_is_one_line_error(tmp_path, teacher_dir, corpus_file):
    start = time.time()
    proc = run_cli(*precompute_args(teacher_dir, corpus_file, tmp_path / "x.zarr", "--backend", "nope"), check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: --backend 'nope'") and len(err.splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists() and time.time() - start < 60


def test_context_check_follows_the_backend(tmp_path, teacher_dir, corpus_file):
    """The teacher's context is 2·SEQ_LEN: vLLM needs one more token than the example, HF does not."""
    from helpers import last_json

    def args(backend, out):
        a = precompute_args(teacher_dir, corpus_file, out, "--backend", backend)
        a[a.index("--seq-len") + 1] = 2 * SEQ_LEN
        a[a.index("--max-examples") + 1] = 2
        return a

    refused = run_cli(*args("vllm", tmp_path / "v.zarr"), check=False)
    assert refused.returncode == 2 and f"use --seq-len <= {2 * SEQ_LEN - 1}" in refused.stderr
    done = last_json(run_cli(*args("hf", tmp_path / "h.zarr")).stdout)
    assert done["complete"] is True and open_store(str(tmp_path / "h.zarr")).seq_len == 2 * SEQ_LEN


def test_max_num_batched_tokens_is_validated():
    from kdstream.engines.vllm import EngineOptions
    from kdstream.errors import KdError
    from kdstream.precompute import PrecomputeOptions

    assert EngineOptions(max_num_batched_tokens=8192).max_num_batched_tokens == 8192
    with pytest.raises(KdError, match="--max-num-batched-tokens 0 must be at least 1"):
        EngineOptions(max_num_batched_tokens=0)
    with pytest.raises(KdError, match="vLLM engine flags: drop them with --backend hf"):
        PrecomputeOptions(model="m", dataset="demo", out="s.zarr", backend="hf",
                          engine=EngineOptions(max_num_batched_tokens=8192))
