"""--loss hard: cross-entropy on the teacher's top-1 token at each stored position (word-level
hard KD), in distill and kdstream.torch, on text and conversation stores."""
from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import one_line_error, run_cli
from kdstream.distill.losses import hard_ce_loss
from kdstream.distill.objective import loss_terms


def test_equals_the_ce_on_the_largest_stored_logprob_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 3.0]])
    # rows unsorted, a -inf padding entry: the top-1 is the largest logprob's id (2, then 1)
    ids = torch.tensor([[3, 2, 0], [1, 0, 3]])
    lps = torch.tensor([[-2.0, -0.3, -1.5], [-0.1, float("-inf"), -3.0]])
    lse = [math.log(sum(math.exp(z) for z in row)) for row in logits.tolist()]
    want = ((lse[0] - (-1.0)) + (lse[1] - 1.0)) / 2
    assert hard_ce_loss(logits, ids, lps).item() == pytest.approx(want, rel=1e-6)
    data = torch.tensor([0, 3])  # the data's next tokens: logged as ce, not trained on
    out = loss_terms(logits, data, ids, lps, loss="hard", temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.0)
    assert out[0].item() == out[2].item() == pytest.approx(want, rel=1e-6)
    assert out[1].item() == pytest.approx(((lse[0] - 2.0) + (lse[1] - 3.0)) / 2, rel=1e-6)


def test_kdloss_on_a_store_batch_is_the_ce_on_the_stores_top1(teacher_store, teacher_dir):
    from transformers import GPTNeoXForCausalLM

    from kdstream.storage import open_store
    from kdstream.torch import KDLoss, StoreDataset, collate

    batch = collate([StoreDataset(teacher_store)[i] for i in range(3)])
    net = GPTNeoXForCausalLM.from_pretrained(str(teacher_dir), torch_dtype=torch.float32)
    logits = net(input_ids=batch["input_ids"]).logits[:, :-1]  # (B, L-1, V)
    loss = KDLoss("hard")
    got = loss(logits, batch)
    fused = loss.from_hidden(net.base_model(input_ids=batch["input_ids"]).last_hidden_state,
                             net.get_output_embeddings(), batch)
    store = open_store(teacher_store)  # by hand, from the read contract: argmax of each row's stored logprobs
    top1 = torch.stack([torch.from_numpy(store[i]["topk_ids"][range(store.seq_len - 1),
                                                              store[i]["topk_logprobs"].argmax(-1)]) for i in range(3)])
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), top1.reshape(-1).long())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_distill_trains_with_hard_targets_and_refuses_another_tokenizer(tmp_path, teacher_store, student_init_dir,
                                                                       docs):
    args = ["distill", "--logits-store", teacher_store, "--loss", "hard", "--epochs", 2, "--batch-size", 8,
            "--lr", "1e-3"]
    run_cli(*args, "--model", student_init_dir, "--out", tmp_path / "hard")
    records = [json.loads(line) for line in (tmp_path / "hard" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["kd"] > 0 for r in records)  # alpha_ce 0: the loss is the top-1 CE
    assert records[-1]["loss"] < records[0]["loss"]
    assert all(r["kd"] != r["ce"] for r in records)  # the teacher's top-1 is not the data's token everywhere

    from helpers import make_gpt_neox
    from kdstream.text.tokenizers import train_bpe_tokenizer

    other = make_gpt_neox(tmp_path / "other", train_bpe_tokenizer(docs, 512 - 64, tmp_path / "tok"), vocab=512)
    proc = run_cli(*args, "--model", other, "--out", tmp_path / "x", check=False)
    assert "--loss hard trains on the teacher's top-1 token ids" in one_line_error(proc)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
