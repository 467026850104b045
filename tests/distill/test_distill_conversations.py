"""distill on a conversation store: the loss and its gradients come from the assistant target rows
only, for KD and the CE baseline alike, and the held-out bits per byte count those tokens only."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_objective import V, neox
from test_trainer import kill_after_checkpoint

from helpers import last_json, losses, make_gpt_neox, one_line_error, run_cli, weight_gap
from kdstream.distill.losses import ce_loss
from kdstream.distill.objective import Objective
from kdstream.storage import open_store


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("loss", ["ce", "forward_kl", "hard"])
def test_only_target_rows_make_the_loss_and_gradients(loss, chunk):
    torch.manual_seed(2)
    B, L, k = 3, 12, 5
    ids = torch.randint(0, V, (B, L))
    teacher = torch.log_softmax(torch.randn(B, L - 1, V) * 3, -1)
    top_lp, top_ids = teacher.topk(k, -1)
    topk_len = (torch.rand(B, L - 1) < 0.4).long() * k
    topk_len[0, 0] = k
    obj = Objective(neox(), loss=loss, temperature=1.0, tail="renormalize", beta=0.5, alpha_ce=0.0, chunk=chunk)
    out = obj(input_ids=ids, topk_ids=top_ids, topk_logprobs=top_lp, topk_len=topk_len)
    out[0].backward()
    grads = {n: p.grad.clone() for n, p in obj.named_parameters()}
    # the same loss by hand: the student's logits at the target rows only
    ref = Objective(neox(), loss=loss, temperature=1.0, tail="renormalize", beta=0.5, alpha_ce=0.0, chunk=None)
    logits = ref.net(input_ids=ids).logits[:, :-1].reshape(-1, V)
    at = (topk_len.reshape(-1) > 0).nonzero()[:, 0]
    expected = ref._losses(logits[at], ids[:, 1:].reshape(-1)[at], top_ids.reshape(-1, k)[at],
                           top_lp.reshape(-1, k)[at])
    expected[0].backward()
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(out[1], ce_loss(logits[at], ids[:, 1:].reshape(-1)[at]), atol=1e-5)
    for n, p in ref.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-5), n


def test_kd_and_ce_train_on_a_conversation_store(chat_store, chat_teacher_dir, tmp_path):
    store = open_store(chat_store)
    common = ["distill", "--logits-store", chat_store, "--model", chat_teacher_dir, "--epochs", 1,
              "--batch-size", 8, "--eval-examples", 6, "--lr", "1e-3"]
    kd = last_json(run_cli(*common, "--out", tmp_path / "kd").stdout)
    ce = last_json(run_cli(*common, "--loss", "ce", "--out", tmp_path / "ce").stdout)
    # held out: the last 6 examples' target positions (assistant tokens), not their prompts
    held = range(len(store) - 6, len(store))
    targets = sum(len(store[i]["positions"]) for i in held)
    for run in (kd, ce):
        assert np.isfinite(run["final_loss"])
        assert run["held_out_tokens"] == targets < sum(len(store[i]["input_ids"]) - 1 for i in held)
    assert kd["held_out_bits_per_byte"] > 0 and ce["held_out_bits_per_byte"] > 0


def test_ce_on_a_chat_dataset_is_ce_on_its_conversation_store(chat_store, chat_teacher_dir, chat_file, tmp_path):
    """`distill --dataset chat.jsonl --loss ce` (how a study trains its teacher) reads the examples
    a store of the same conversations holds, and trains on the same assistant targets."""
    from chat_templates import CHAT_SEQ_LEN

    common = ["--model", chat_teacher_dir, "--loss", "ce", "--epochs", 1, "--batch-size", 8, "--eval-examples", 6,
              "--lr", "1e-3"]
    via_store = last_json(run_cli("distill", "--logits-store", chat_store, *common, "--out", tmp_path / "s").stdout)
    direct = last_json(run_cli("distill", "--dataset", chat_file, "--seq-len", CHAT_SEQ_LEN, *common,
                               "--out", tmp_path / "d").stdout)
    assert direct["held_out_tokens"] == via_store["held_out_tokens"] > 0
    assert losses(tmp_path / "d") == pytest.approx(losses(tmp_path / "s"), abs=1e-6)
    assert weight_gap(tmp_path / "d", tmp_path / "s") < 1e-6
    # every position a target: more tokens learned from, so another run
    everything = last_json(run_cli("distill", "--dataset", chat_file, "--seq-len", CHAT_SEQ_LEN, *common,
                                   "--train-on", "all", "--out", tmp_path / "a").stdout)
    assert everything["held_out_tokens"] > direct["held_out_tokens"]


def test_chat_flags_with_a_store_and_online_kd_on_chat_are_refused(chat_store, chat_teacher_dir, chat_file, tmp_path):
    proc = run_cli("distill", "--logits-store", chat_store, "--model", chat_teacher_dir, "--train-on", "all",
                   "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "read a --dataset" in one_line_error(proc)
    proc = run_cli("distill", "--dataset", chat_file, "--teacher", chat_teacher_dir, "--model", chat_teacher_dir,
                   "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "for a chat dataset, precompute a store" in one_line_error(proc)
    assert not (tmp_path / "o").exists()


def test_a_student_of_another_tokenizer_without_a_chat_template_is_refused(chat_store, student_init_dir, tmp_path):
    proc = run_cli("distill", "--logits-store", chat_store, "--model", student_init_dir, "--out", tmp_path / "o",
                   check=False)
    assert proc.returncode == 2 and "pass --student-chat-template FILE" in one_line_error(proc)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow

def test_a_killed_distill_on_conversations_resumes_to_the_same_losses(tmp_path, chat_store, chat_teacher_dir):
    args = ["distill", "--logits-store", chat_store, "--model", chat_teacher_dir, "--epochs", 2,
            "--batch-size", 8, "--lr", "1e-3", "--checkpoint-every", 3]
    run_cli(*args, "--out", tmp_path / "straight")
    out = kill_after_checkpoint(args, tmp_path / "killed", 3)
    run_cli(*args, "--out", out, "--resume")
    assert losses(out) == losses(tmp_path / "straight")
    assert weight_gap(out, tmp_path / "straight") == 0


@pytest.fixture(scope="module")
def chat_student(tmp_path_factory, chat_teacher_dir):
    """A student of the chat teacher's tokenizer with other weights (the teacher itself would have
    ~0 gradients, which Adam turns into rounding noise)."""
    from transformers import AutoTokenizer

    return make_gpt_neox(tmp_path_factory.mktemp("chat_student"), AutoTokenizer.from_pretrained(str(chat_teacher_dir)),
                         layers=1, seed=11)


def test_packed_and_padded_batches_train_alike(chat_store, chat_student, tmp_path):
    common = ["distill", "--logits-store", chat_store, "--model", chat_student, "--epochs", 1,
              "--batch-size", 8, "--lr", "1e-3"]
    run_cli(*common, "--out", tmp_path / "packed")
    run_cli(*common, "--batching", "padded", "--out", tmp_path / "padded")
    a, b = losses(tmp_path / "packed"), losses(tmp_path / "padded")
    assert np.allclose(a, b, atol=1e-4) and weight_gap(tmp_path / "packed", tmp_path / "padded") < 1e-4


def test_grad_accum_weighs_micro_batches_by_their_targets(chat_store, chat_student, tmp_path):
    common = ["distill", "--logits-store", chat_store, "--model", chat_student, "--epochs", 1,
              "--batch-size", 8, "--lr", "1e-3", "--batching", "padded"]
    run_cli(*common, "--out", tmp_path / "one")
    run_cli(*common, "--grad-accum", 3, "--out", tmp_path / "three")
    # the step's loss is the batch's mean over target positions however it is split
    assert np.allclose(losses(tmp_path / "one"), losses(tmp_path / "three"), atol=1e-5)
    assert weight_gap(tmp_path / "one", tmp_path / "three") < 1e-4


@pytest.mark.parametrize("loss", ["ce", "forward_kl"])
def test_a_generated_store_trains_a_student(gen_store, chat_teacher_dir, tmp_path, loss):
    """--loss ce on teacher-written responses is sequence-level KD (the sampled tokens as hard
    targets), forward_kl soft KD on the teacher's own text: both on the response rows only."""
    store = open_store(gen_store[0])
    run = last_json(run_cli("distill", "--logits-store", gen_store[0], "--model", chat_teacher_dir, "--epochs", 1,
                            "--batch-size", 6, "--eval-examples", 3, "--lr", "1e-3", "--loss", loss,
                            "--out", tmp_path / loss).stdout)
    held = range(len(store) - 3, len(store))
    assert np.isfinite(run["final_loss"])
    assert run["held_out_tokens"] == sum(len(store[i]["positions"]) for i in held)
