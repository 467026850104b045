"""How far a store is from its teacher: mean KL(full teacher ‖ stored approximation).

``kdstream store stats --reference-model`` composes this with ``storage.stats.store_stats``; it
lives here, not in storage/, because it loads a model (engines.hf) and storage loads none.
"""
from __future__ import annotations

import math
from typing import Any

from kdstream.errors import KdError


def reference_kl(url: str, model_dir: str, examples: int = 8, batch_size: int = 4, device: str = "auto") -> dict[str, Any]:
    """Mean KL(full teacher ‖ stored approximation) over every position of the first ``examples``
    (of a conversation store: every target position).

    The full teacher is a transformers fp32 forward of ``model_dir`` (the teacher, or any model of
    the same vocabulary) over the stored input_ids, on ``device`` (engines.hf: auto = CUDA when
    available); the KL sums run on the CPU in float64. Two approximations, both from the decoded store:
    ``kl_full``: a distribution over the whole vocabulary: the stored top-k probabilities, and the
    tail mass spread evenly over the other V - k tokens (what is lost by keeping only the top-k);
    ``kl_bucket``: over k + 1 classes (the top-k ids, one bucket for the rest), the view a top-k
    KD loss takes: only the encoding's quantization and the teacher/reference mismatch remain.
    """
    import torch

    from kdstream.engines.hf import load_causal_lm
    from kdstream.model_files import check_model_dir, model_config
    from kdstream.storage import open_store

    store = open_store(url)
    if store.sampled:
        raise KdError(f"store {url} holds sampled targets: undrawn tokens have estimate 0, so KL(teacher || store) "
                      "is infinite; use --reference-model on a top-k store")
    model_dir = check_model_dir(model_dir, "reference")
    vocab = int(model_config(model_dir).get("vocab_size", 0))
    if vocab != store.vocab_size:
        raise KdError(f"--reference-model {model_dir} has a vocabulary of {vocab}, the store {store.vocab_size}: "
                      "pass the store's teacher (or a model with the same tokenizer)")
    model = load_causal_lm(model_dir, "float32", device)
    n = max(1, min(int(examples), len(store)))
    rows = store.read(0, n, ("input_ids", "topk_ids", "topk_logprobs", "tail_mass", "topk_len"))
    V = store.vocab_size
    full_sum = bucket_sum = 0.0
    positions = 0
    for b in range(0, n, batch_size):
        ids = torch.from_numpy(rows["input_ids"][b : b + batch_size])  # (B, L)
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device)).logits[:, :-1].cpu()  # (B, L-1, V)
        logp = torch.log_softmax(logits.double(), -1)  # (B, L-1, V)
        top = torch.from_numpy(rows["topk_ids"][b : b + batch_size])  # (B, L-1, k)
        q_top = torch.from_numpy(rows["topk_logprobs"][b : b + batch_size]).double()  # (B, L-1, k)
        tail = torch.from_numpy(rows["tail_mass"][b : b + batch_size]).double().clamp(min=1e-30)  # (B, L-1)
        n_row = torch.from_numpy(rows["topk_len"][b : b + batch_size]).double()  # (B, L-1): k unless ragged
        # a ragged row's padding (-inf, id 0) lists nothing: point it at the row's first entry instead
        pad = torch.isneginf(q_top)
        top, q_top = torch.where(pad, top[..., :1], top), torch.where(pad, q_top[..., :1], q_top)
        p = logp.exp()
        # full vocabulary: log q = log(tail / (V - n)) off the row's n listed entries, the stored value on them
        log_q = (tail.log() - (V - n_row).clamp(min=1).log())[..., None].expand_as(logp).clone()
        log_q.scatter_(-1, top, q_top)
        # a conversation store has rows at its target positions only (topk_len > 0): count those
        on = n_row > 0 if store.conversations else None  # (B, L-1)
        full = p * (logp - log_q)  # (B, L-1, V)
        full_sum += float(full.sum() if on is None else full.sum(-1)[on].sum())
        # k + 1 classes: [top-k..., rest]
        p_top = logp.gather(-1, top).masked_fill(pad, -math.inf)  # (B, L-1, k)
        q_top = q_top.masked_fill(pad, -math.inf)
        p_rest = torch.log1p(-p_top.exp().sum(-1).clamp(max=1 - 1e-15))  # (B, L-1)
        lp_cls = torch.cat([p_top, p_rest[..., None]], -1)
        lq_cls = torch.cat([q_top, tail.log()[..., None]], -1)
        listed = torch.isfinite(lp_cls)  # padding: no class on either side
        bucket = torch.where(listed, lp_cls.exp() * (lp_cls - lq_cls), 0.0)  # (B, L-1, k+1)
        bucket_sum += float(bucket.sum() if on is None else bucket.sum(-1)[on].sum())
        positions += p_top.shape[0] * p_top.shape[1] if on is None else int(on.sum())
    return {"reference_model": str(model_dir), "kl_examples": n, "kl_positions": positions,
            "kl_full_mean": full_sum / positions, "kl_bucket_mean": bucket_sum / positions}
