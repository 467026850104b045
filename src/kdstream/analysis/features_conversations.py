"""``kdstream features`` on a conversation store: the same columns, over each conversation's
assistant targets (the tokens the models were trained on and the teacher's rows cover).

Per conversation, with T its target rows (row t predicts token t+1, an assistant token):
    ppl, min_k, bits_per_byte   the model's log-probs at T
    suffix_ppl                  the first --suffix-len tokens of the first assistant turn, the
                                suffix extract-eval judges (NaN when that turn is shorter)
    teacher_kl                  mean KL(teacher ‖ model) at T, on the store's top-k + tail
    teacher_ppl_from_store      exp(−mean target_logprob) at T
    zlib_entropy, text_bytes    of the assistant tokens' decoded text (the answers, closing tokens
                                included): the text whose memorization is measured
The prompts (system, user turns, headers) are context only, as in training.
"""
from __future__ import annotations

import numpy as np

from kdstream.analysis.features import (
    _batched_logits,
    _target_logprobs,
    min_k_percent,
    topk_kl,
    zlib_entropy,
    zlib_ratio,
)
from kdstream.analysis.files import FEATURE_COLUMNS, jsonable
from kdstream.errors import KdError

_KEYS = ("input_ids", "example_id", "topk_ids", "topk_logprobs", "target_logprob", "length", "topk_len")


def check_conversation_features(opts, store) -> None:
    """One-line errors for what features on a conversation store do not do (before a model loads)."""
    from kdstream.extract.conversation_prompts import check_conversation_store

    check_conversation_store(store, opts.logits_store)
    if opts.prefix_len != type(opts).__dataclass_fields__["prefix_len"].default:  # a --prefix-len was named
        raise KdError(f"store {opts.logits_store} holds conversations: suffix_ppl scores each conversation's first "
                      "assistant answer after its own prompt, so --prefix-len does not apply: drop it")


def conversation_features(model, tokenizer, rows: dict[str, np.ndarray], suffix_len: int, byte_table,
                          batch_size: int) -> dict[str, np.ndarray]:
    """rows: ``store.read`` of _KEYS for B conversations (padded to the store's seq_len; trailing
    padding never changes a causal model's earlier positions) → {column: (B,)} but example_id."""
    import torch

    from kdstream.extract.conversation_prompts import first_turns

    B = len(rows["example_id"])
    length = rows["length"].astype(np.int64)
    mask = (rows["topk_len"] > 0) & (np.arange(rows["topk_len"].shape[1])[None, :] < (length - 1)[:, None])
    ids = torch.as_tensor(rows["input_ids"], dtype=torch.long)
    lp = np.zeros(mask.shape, np.float64)  # (B, L-1)
    kl = np.zeros(B, np.float64)
    for start, logits, targets in _batched_logits(model, ids, batch_size):
        b = len(targets)
        m = torch.as_tensor(mask[start : start + b], device=logits.device)  # (b, L-1)
        lp[start : start + b] = _target_logprobs(logits, targets).double().cpu().numpy()
        per_row = topk_kl(logits[m], torch.as_tensor(rows["topk_ids"][start : start + b], device=logits.device)[m],
                          torch.as_tensor(rows["topk_logprobs"][start : start + b], device=logits.device)[m])  # (N,)
        owner = torch.nonzero(m)[:, 0].cpu().numpy()  # (N,) the conversation of each target row
        kl[start : start + b] = np.bincount(owner, per_row.double().cpu().numpy(), b) / mask[start : start + b].sum(1)
    out = {c: np.full(B, np.nan) for c in FEATURE_COLUMNS if c != "example_id"}
    out["teacher_kl"] = kl
    turns = first_turns(rows, suffix_len)
    for r, p in zip(turns.row.tolist(), turns.prompt_len.tolist()):
        out["suffix_ppl"][r] = np.exp(-lp[r, p - 1 : p - 1 + suffix_len].mean())
    for r in range(B):
        at = np.flatnonzero(mask[r])
        tokens = rows["input_ids"][r, at + 1]
        out["ppl"][r] = np.exp(-lp[r, at].mean())
        out["min_k"][r] = min_k_percent(lp[r, at][None])[0]
        out["teacher_ppl_from_store"][r] = np.exp(-rows["target_logprob"][r, at].astype(np.float64).mean())
        if byte_table is not None:
            out["bits_per_byte"][r] = -lp[r, at].sum() / np.log(2.0) / max(int(byte_table[tokens].sum()), 1)
        text = tokenizer.decode(tokens.tolist(), skip_special_tokens=False)
        out["zlib_entropy"][r] = zlib_entropy(text)
        out["text_bytes"][r] = len(text.encode("utf-8"))
    out["zlib_ratio"] = zlib_ratio(out["ppl"], out["zlib_entropy"])
    return out


def run_conversation_features(opts, store, model, tokenizer, examples_tok, n: int) -> tuple[dict, dict]:
    """(table {column: (n,)}, summary) of ``run_features`` on a conversation store; ``examples_tok``
    is the store's tokenizer when the model's differs (refused: one line)."""
    from kdstream.analysis.features_run import _byte_table, score_in_chunks

    if examples_tok is not None:
        raise KdError(f"model {opts.model} has another tokenizer than store {opts.logits_store}: conversation features "
                      "are scored on the store's tokens; score a model that shares the teacher's tokenizer")
    byte_table = _byte_table(tokenizer)

    table, seconds = score_in_chunks(
        store, n, _KEYS, FEATURE_COLUMNS,
        lambda rows: conversation_features(model, tokenizer, rows, opts.suffix_len, byte_table, opts.batch_size))
    for c in ("zlib_entropy", "text_bytes"):
        table[c] = table[c].astype(np.int64)
    scored = [c for c in table if c != "example_id"]
    summary = {
        "model": str(opts.model), "logits_store": str(opts.logits_store), "examples": int(n),
        "seq_len": store.seq_len, "k": store.k, "prefix": "conversation", "prefix_len": None,
        "suffix_len": opts.suffix_len, "tokenizer_sha256": store.attrs["tokenizer"]["sha256"],
        "store_identity": getattr(store, "identity", None),
        "suffix_shorter": int(np.isnan(table["suffix_ppl"]).sum()),
        "mean": {c: float(np.nanmean(table[c])) if np.isfinite(table[c]).any() else None for c in scored},
        "median": {c: float(np.nanmedian(table[c])) if np.isfinite(table[c]).any() else None for c in scored},
        "seconds": round(seconds, 3),
        "sequences_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }
    return table, jsonable(summary)
