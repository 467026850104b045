"""precompute-logits --generate with a real vLLM engine: the teacher writes --samples responses per
prompt, and the store holds them as conversation examples with the sampling pass's top-k at every
generated position, aligned with the tokens and checked against a teacher-forced forward pass."""
from __future__ import annotations

import json

import numpy as np
import pytest

from chat_templates import GEN_PROMPTS as PROMPTS
from chat_templates import GEN_SAMPLES as SAMPLES
from chat_templates import generate_args
from helpers import one_line_error, run_cli
from kdstream.storage import open_store


def test_samples_share_a_prompt_id_and_the_store_records_the_sampling(gen_store, prompt_file):
    out, summary = gen_store
    store = open_store(out)
    assert store.conversations and store.generated and len(store) == PROMPTS * SAMPLES
    gen = store.attrs["generation"]
    assert (gen["samples"], gen["max_new_tokens"], gen["temperature"], gen["seed"]) == (SAMPLES, 12, 1.0, 5)
    items = [store[i] for i in range(len(store))]
    assert [int(x["example_id"]) for x in items] == list(range(PROMPTS * SAMPLES))
    assert [int(x["prompt_id"]) for x in items] == [e // SAMPLES for e in range(PROMPTS * SAMPLES)]
    assert [int(x["doc_index"]) for x in items[::SAMPLES]] == list(range(PROMPTS))  # rows 0..5 all hold prompts
    reasons = gen["finish_reasons"]
    for x in items:
        n = len(x["positions"])
        prompt = len(x["input_ids"]) - n
        # the response: every position from the last prompt token on
        assert np.array_equal(x["positions"], np.arange(prompt - 1, prompt - 1 + n))
        assert 1 <= n <= 12 and reasons[int(x["finish_reason"])] == ("length" if n == 12 and
                                                                     x["input_ids"][-1] not in gen["stop_token_ids"]
                                                                     else "stop")
    # a prompt's samples share its tokens and (at T = 1) differ in their responses
    for p in range(PROMPTS):
        group = items[p * SAMPLES : (p + 1) * SAMPLES]
        starts = {len(x["input_ids"]) - len(x["positions"]) for x in group}
        assert len(starts) == 1
        assert len({x["input_ids"].tobytes() for x in group}) > 1
    assert summary["finish_reasons"] == {r: sum(reasons[int(x["finish_reason"])] == r for x in items) for r in reasons}
    counts = store.attrs["conversations"]
    assert counts["target_positions"] == summary["target_positions"] == sum(len(x["positions"]) for x in items)
    assert counts["tokens"] == sum(len(x["input_ids"]) for x in items)
    assert run_cli("store", "verify", out).returncode == 0


def test_each_row_predicts_the_generated_token_after_it(gen_store, chat_teacher_dir):
    """Row t's target_logprob is the logprob of input_ids[t+1] (the sampled token), and its top-k
    is the teacher's distribution there: a teacher-forced forward pass over the same tokens."""
    import torch
    from transformers import GPTNeoXForCausalLM

    store = open_store(gen_store[0])
    model = GPTNeoXForCausalLM.from_pretrained(str(chat_teacher_dir), torch_dtype=torch.float32).eval()
    overlap, gap = [], 0.0
    for i in range(len(store)):
        x = store[i]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor(x["input_ids"][None])).logits[0].double(), -1).numpy()
        for j, t in enumerate(x["positions"]):
            ref = np.argsort(-logp[t])[:8]
            overlap.append(len(set(ref) & set(x["topk_ids"][j])) / 8)
            gap = max(gap, float(np.abs(logp[t][x["topk_ids"][j]] - x["topk_logprobs"][j]).max()))
            assert abs(logp[t][x["input_ids"][t + 1]] - x["target_logprob"][j]) < 1e-3
            assert x["target_rank"][j] == 1 + int((logp[t] > logp[t][x["input_ids"][t + 1]] + 1e-6).sum())
    assert np.mean(overlap) >= 0.99 and gap < 1e-3


@pytest.mark.slow
def test_the_same_seed_gives_the_same_store_and_another_seed_other_responses(gen_store, chat_teacher_dir,
                                                                             prompt_file, tmp_path):
    a = open_store(gen_store[0])
    # the same batches: another --batch-size may change the logits in their last bits (docs/generate.md)
    run_cli(*generate_args(chat_teacher_dir, prompt_file, tmp_path / "again.zarr"))
    run_cli(*generate_args(chat_teacher_dir, prompt_file, tmp_path / "other.zarr", "--seed", 6))
    b, c = open_store(tmp_path / "again.zarr"), open_store(tmp_path / "other.zarr")
    for i in range(len(a)):
        x, y = a[i], b[i]
        for key in x:
            assert np.array_equal(x[key], y[key]), (i, key)
    assert any(not np.array_equal(a[i]["input_ids"], c[i]["input_ids"]) for i in range(len(a)))


@pytest.mark.slow
def test_greedy_prompt_field_and_one_sample(chat_teacher_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Tell me about module number {i}."}) + "\n" for i in range(3)))
    out = tmp_path / "greedy.zarr"
    run_cli("precompute-logits", "--generate", "--model", chat_teacher_dir, "--dataset", data, "--out", out,
            "--top-k", 4, "--max-new-tokens", 6, "--temperature", 0, "--dtype", "float32")
    store = open_store(out)
    assert len(store) == 3 and store.attrs["options"]["samples"] == 1
    for i in range(3):
        x = store[i]
        assert np.all(x["target_rank"] == 1)  # greedy: every token is the argmax
        assert np.array_equal(x["topk_ids"][:, 0], x["input_ids"][x["positions"] + 1])


@pytest.mark.parametrize("extra, message", [
    (("--temperature", "-0.5"), "--temperature -0.5 is negative"),
    (("--max-new-tokens", "0"), "--max-new-tokens 0 must be at least 1"),
    (("--samples", "0"), "--samples 0 must be at least 1"),
    (("--max-new-tokens", "120"), "needs a context of"),
    (("--backend", "hf"), "--generate runs on vLLM"),
    (("--temperature", "0"), "--temperature 0 is greedy"),
])
def test_bad_generate_input_is_a_one_line_error(chat_teacher_dir, prompt_file, tmp_path, extra, message):
    proc = run_cli(*generate_args(chat_teacher_dir, prompt_file, tmp_path / "s.zarr", *extra), check=False)
    assert message in one_line_error(proc)
    assert not (tmp_path / "s.zarr").exists()


def test_a_dataset_without_prompts_is_a_one_line_error(chat_teacher_dir, tmp_path):
    data = tmp_path / "none.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "assistant", "content": "Only an answer."}]}) + "\n")
    proc = run_cli("precompute-logits", "--generate", "--model", chat_teacher_dir, "--dataset", data,
                   "--out", tmp_path / "s.zarr", check=False)
    assert "has no prompts" in one_line_error(proc)
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "plain text"}) + "\n")
    proc = run_cli("precompute-logits", "--generate", "--model", chat_teacher_dir, "--dataset", text,
                   "--out", tmp_path / "t.zarr", check=False)
    assert "row 0 holds no prompt" in one_line_error(proc)


@pytest.mark.slow
def test_the_example_script_generates_and_trains_two_students(chat_teacher_dir, prompt_file, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "generate_then_distill.py"
    args = ["--teacher", chat_teacher_dir, "--student", chat_teacher_dir, "--prompts", prompt_file, "--work", tmp_path,
            "--samples", 2, "--max-new-tokens", 8, "--top-k", 8, "--dtype", "float32", "--suffix-len", 2]
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert set(report) == {"kd", "seq_ce"}
    for run in report.values():  # extract-eval judged the students on the teacher's responses
        assert 0 < run["judged"] <= 2 * 8 and 0 <= run["recited"] <= run["judged"]


@pytest.mark.slow
def test_ragged_qdelta_options_write_the_same_responses(gen_store, chat_teacher_dir, prompt_file, tmp_path):
    """--top-p and qdelta as for scoring stores: the same responses (same seed, same batches), each
    row a prefix of the fp32 store's row, its values within the encoding's bound."""
    out = tmp_path / "ragged.zarr"
    args = [a for a in generate_args(chat_teacher_dir, prompt_file, out) if a not in ("--logprob-encoding", "fp32")]
    run_cli(*args, "--top-p", "0.5")
    a, b = open_store(gen_store[0]), open_store(out)
    bound = b.encoding["max_abs_error"]
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert np.array_equal(x["input_ids"], y["input_ids"]) and np.array_equal(x["positions"], y["positions"])
        n = (y["topk_logprobs"] > -np.inf).sum(-1)  # (n_i,) entries kept per row
        assert n.min() >= 1 and n.max() <= 8
        for j in range(len(n)):
            assert np.array_equal(x["topk_ids"][j, : n[j]], y["topk_ids"][j, : n[j]])
        assert np.abs(x["target_logprob"] - y["target_logprob"]).max() <= bound + 1e-6
    assert run_cli("store", "verify", out).returncode == 0
