"""kdstream.torch on a conversation store: StoreDataset + collate + KDLoss give the loss over the
assistant target positions that ``store[i]`` names, and nothing else."""
from __future__ import annotations

import torch

from kdstream.distill.objective import loss_terms
from kdstream.storage import open_store
from kdstream.torch import KDLoss, StoreDataset, collate


def test_kdloss_on_a_conversation_batch_is_the_loss_at_the_stores_positions(chat_store, chat_teacher_dir):
    from transformers import GPTNeoXForCausalLM

    ds = StoreDataset(chat_store)
    assert "topk_len" in ds.keys
    batch = collate([ds[i] for i in range(4)])
    net = GPTNeoXForCausalLM.from_pretrained(str(chat_teacher_dir), torch_dtype=torch.float32)
    logits = net(input_ids=batch["input_ids"]).logits  # (B, L, V): padding after each example's tokens
    loss = KDLoss("forward_kl", temperature=2.0)
    got = loss(logits, batch)
    hidden = net.base_model(input_ids=batch["input_ids"]).last_hidden_state
    fused = loss.from_hidden(hidden, net.get_output_embeddings(), batch)
    # by hand, from the public read contract: the rows at store[i]["positions"] only
    store = open_store(chat_store)
    rows, targets, ids, lps = _at_positions(store, logits, 4)
    want = loss_terms(rows, targets, ids, lps, loss="forward_kl",
                      temperature=2.0, tail="bucket", beta=0.5, alpha_ce=0.0)[0]
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(fused, want, atol=1e-4)


def test_kdloss_and_ce_on_a_generated_store(gen_store, chat_teacher_dir):
    """A store of teacher-written responses through StoreDataset + collate: KDLoss is the loss at
    the response rows, and the CE on the same rows is the sequence-level (hard target) loss."""
    from transformers import GPTNeoXForCausalLM

    from kdstream.distill.losses import ce_loss

    ds = StoreDataset(gen_store[0])
    batch = collate([ds[i] for i in range(6)])
    net = GPTNeoXForCausalLM.from_pretrained(str(chat_teacher_dir), torch_dtype=torch.float32)
    logits = net(input_ids=batch["input_ids"]).logits
    store = open_store(gen_store[0])
    rows, targets, ids, lps = _at_positions(store, logits, 6)
    want = loss_terms(rows, targets, ids, lps, loss="forward_kl",
                      temperature=1.0, tail="bucket", beta=0.5, alpha_ce=0.0)[0]
    assert torch.allclose(KDLoss("forward_kl", temperature=1.0)(logits, batch), want, atol=1e-5)
    assert torch.allclose(KDLoss("ce")(logits, batch), ce_loss(rows, targets), atol=1e-5)


def _at_positions(store, logits, n: int):
    """(logits, next tokens, teacher top-k ids, logprobs) at the rows store[i]["positions"] of
    examples 0..n-1, concatenated: the public read contract, by hand."""
    rows, targets, ids, lps = [], [], [], []
    for i in range(n):
        item = store[i]
        p = torch.from_numpy(item["positions"])
        rows.append(logits[i, p])
        targets.append(torch.from_numpy(item["input_ids"][item["positions"] + 1]))
        ids.append(torch.from_numpy(item["topk_ids"]))
        lps.append(torch.from_numpy(item["topk_logprobs"]))
    return torch.cat(rows), torch.cat(targets), torch.cat(ids), torch.cat(lps)
