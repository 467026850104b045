"""precompute-logits on a chat dataset: one example per conversation, teacher rows only at the
assistant targets, read back through the public contract and checked against the teacher's own
forward pass."""
from __future__ import annotations

import json

import numpy as np
import pytest

from chat_templates import CHAT_SEQ_LEN, chat_precompute_args
from helpers import last_json, one_line_error, run_cli
from kdstream.storage import open_store


def test_store_rows_are_the_assistant_targets_and_match_the_teachers_forward_pass(chat_store, chat_teacher_dir,
                                                                                   chat_file):
    import torch
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    from kdstream.data.conversations import conversations_of
    from kdstream.text.chat import ChatOptions, chat_examples, template_of

    store = open_store(chat_store)
    assert store.conversations and store.format_version == 7
    rows = [json.loads(line) for line in chat_file.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(str(chat_teacher_dir))
    ex = chat_examples(conversations_of(rows, "t"), tok, template_of(tok, None), CHAT_SEQ_LEN, ChatOptions())
    assert len(store) == len(ex) == 39  # row 7 has no assistant turn
    model = GPTNeoXForCausalLM.from_pretrained(str(chat_teacher_dir), torch_dtype=torch.float32).eval()
    overlap, gap = [], 0.0
    for i in range(len(store)):
        item = store[i]
        n = int(ex.length[i])
        assert np.array_equal(item["input_ids"], ex.input_ids[i, :n])
        assert np.array_equal(item["positions"], np.flatnonzero(ex.target_mask[i]))
        assert item["topk_ids"].shape == (len(item["positions"]), 8)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor(item["input_ids"][None])).logits[0].double(), -1).numpy()
        for j, t in enumerate(item["positions"]):
            ref = np.argsort(-logp[t])[:8]
            overlap.append(len(set(ref) & set(item["topk_ids"][j])) / 8)
            gap = max(gap, float(np.abs(logp[t][item["topk_ids"][j]] - item["topk_logprobs"][j]).max()))
            assert abs(logp[t][item["input_ids"][t + 1]] - item["target_logprob"][j]) < 1e-3
    assert np.mean(overlap) >= 0.99 and gap < 1e-3


def test_info_verify_and_the_all_positions_store(chat_store, chat_teacher_dir, chat_file, tmp_path):
    assert run_cli("store", "verify", chat_store).returncode == 0
    everything = tmp_path / "all.zarr"
    args = chat_precompute_args(chat_teacher_dir, chat_file, everything, "--train-on", "all", "--backend", "hf",
                                "--logprob-encoding", "fp32")
    run_cli(*args)
    summary = last_json(run_cli(*args, "--overwrite").stdout)  # a conversation store is the command's own
    a, b = open_store(chat_store), open_store(everything)
    assert summary["target_positions"] == sum(len(b[i]["positions"]) for i in range(len(b)))
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert np.array_equal(y["positions"], np.arange(len(y["input_ids"]) - 1))
        assert set(x["positions"]) < set(y["positions"])
        np.testing.assert_array_equal(x["topk_ids"], y["topk_ids"][x["positions"]])
        np.testing.assert_allclose(x["topk_logprobs"], y["topk_logprobs"][x["positions"]], atol=1e-3)
    info = json.loads(run_cli("store", "info", "--json", chat_store).stdout)
    assert info["attributes"]["format_version"] == 7
    size = info["size"]
    assert size["examples"] == 39 and size["target_positions"] == sum(len(a[i]["positions"]) for i in range(len(a)))
    assert size["tokens"] == sum(len(a[i]["input_ids"]) for i in range(len(a))) > size["target_positions"]


@pytest.mark.parametrize("extra, message", [
    (("--chat-template", "missing.jinja"), "--chat-template missing.jinja not found"),
    (("--format", "text"), "holds conversations (fields: messages)"),
    (("--targets", "sampled"), "--targets sampled is for text datasets"),
])
def test_bad_chat_options_are_one_line_errors(chat_teacher_dir, chat_file, tmp_path, extra, message):
    proc = run_cli(*chat_precompute_args(chat_teacher_dir, chat_file, tmp_path / "s.zarr", "--backend", "hf", *extra),
                   check=False)
    assert proc.returncode == 2 and message in one_line_error(proc)


def test_train_on_with_plain_text_is_refused(teacher_dir, corpus_file, tmp_path):
    proc = run_cli("precompute-logits", "--model", teacher_dir, "--dataset", corpus_file, "--out", tmp_path / "s",
                   "--train-on", "assistant", "--backend", "hf", "--seq-len", 32, check=False)
    assert proc.returncode == 2 and "--train-on is for chat datasets" in one_line_error(proc)


def test_a_teacher_without_a_chat_template_names_the_flag(teacher_dir, chat_file, tmp_path):
    proc = run_cli(*chat_precompute_args(teacher_dir, chat_file, tmp_path / "s.zarr", "--backend", "hf"), check=False)
    assert proc.returncode == 2 and "pass one with --chat-template FILE" in one_line_error(proc)


@pytest.mark.parametrize("command", ["extract-eval", "features"])
def test_window_options_are_refused_on_a_conversation_store(chat_store, chat_teacher_dir, tmp_path, command):
    """A conversation's prefix is its own prompt: a window's --prefix-len is refused, never read as one."""
    proc = run_cli(command, "--model", chat_teacher_dir, "--logits-store", chat_store, "--out", tmp_path / "e",
                   "--prefix-len", 8, "--suffix-len", 8, check=False)
    line = one_line_error(proc)
    assert f"store {chat_store} holds conversations" in line and "--prefix-len" in line and "drop" in line
