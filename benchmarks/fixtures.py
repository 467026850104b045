"""What tests and benchmarks build alike: tiny GPT-NeoX models from config (no hub) and synthetic
top-k stores written by kdstream's own writer.

Benchmarks import it as ``benchmarks.fixtures`` (run with ``python -m benchmarks.NAME`` from the
repository root); tests import it the same way (pyproject's pytest ``pythonpath`` puts the root on
the path). It lives here rather than in tests/ because tests/ is not a package, and a benchmark
may not edit the import path to reach it (tests/test_benchmark_results.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_gpt_neox_config(vocab: int, *, hidden: int = 128, layers: int = 2, heads: int | None = None,
                         intermediate: int | None = None, positions: int = 2048, eos: int | None = None):
    """A GPT-NeoX (Pythia's architecture) config: heads of 64 unless ``heads`` is given (vLLM's CPU
    backend rejects a head dim of 16), ``intermediate`` 4 × hidden unless given, untied output layer;
    ``eos``: the tokenizer's EOS id, used as BOS and EOS."""
    from transformers import GPTNeoXConfig

    ids = {} if eos is None else {"bos_token_id": eos, "eos_token_id": eos}
    return GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads or max(1, hidden // 64),
                         intermediate_size=intermediate or 4 * hidden, max_position_embeddings=positions,
                         rotary_pct=0.25, tie_word_embeddings=False, **ids)


def tiny_gpt_neox(vocab: int, *, seed: int | None = 0, **config):
    """A random GPT-NeoXForCausalLM of ``tiny_gpt_neox_config(vocab, **config)``, initialised after
    ``torch.manual_seed(seed)`` (None: from the current RNG state)."""
    import torch
    from transformers import GPTNeoXForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    return GPTNeoXForCausalLM(tiny_gpt_neox_config(vocab, **config))


def topk_rows(n: int, seq_len: int, k: int, vocab: int, *, seed: int = 0, sharpness: float | np.ndarray = 1.0,
              argmax_share: float = 0.0, first_id: int = 0) -> dict[str, np.ndarray]:
    """``n`` examples of teacher rows as precompute writes them, from a softmax over ``vocab``
    logits drawn as ``sharpness`` × N(0, 1) per position (a number, or an array broadcasting to
    (n, L-1, 1)): each row's top-k ids and logprobs, descending (a real top-k, so its mass is < 1);
    the next token the teacher's argmax at ``argmax_share`` of the positions, else random; its
    exact logprob and 1-based rank. Example ids ``first_id`` …, three examples per document."""
    rng = np.random.default_rng(seed)
    logits = sharpness * rng.normal(size=(n, seq_len - 1, vocab))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # (n, L-1, V)
    top = np.argsort(-logp, axis=-1)[..., :k]  # (n, L-1, k)
    ids = rng.integers(0, vocab, size=(n, seq_len))
    if argmax_share:
        ids[:, 1:] = np.where(rng.random((n, seq_len - 1)) < argmax_share, top[..., 0], ids[:, 1:])
    target = np.take_along_axis(logp, ids[:, 1:, None], -1)  # (n, L-1, 1)
    return {"input_ids": ids, "example_id": first_id + np.arange(n), "doc_index": np.arange(n) // 3,
            "topk_ids": top, "topk_logprobs": np.take_along_axis(logp, top, -1).astype(np.float32),
            "target_logprob": target[..., 0].astype(np.float32),
            "target_rank": 1 + (logp > target).sum(-1)}  # (n, L-1), 1 = argmax


def write_rows(url: str | Path, rows: dict[str, np.ndarray], *, vocab: int, chunk_rows: int = 4,
               attrs: dict | None = None, batch: int | None = None, finalize: bool = True, **writer):
    """A store of ``rows`` (``topk_rows``' keys) at ``url`` through kdstream's StoreWriter, appended
    ``batch`` rows at a time (None: at once; a batch that does not line up with the chunks tests
    the writer's buffering); finalized unless ``finalize`` is False. ``writer``: StoreWriter's other
    options (encoding, selection, overwrite, …). Returns the writer."""
    from kdstream.storage import StoreWriter

    n, seq_len = rows["input_ids"].shape
    k = rows["topk_ids"].shape[-1]
    w = StoreWriter(str(url), num_examples=n, seq_len=seq_len, k=k, vocab_size=vocab,
                    attrs={} if attrs is None else attrs, chunk_rows=chunk_rows, **writer)
    step = batch or n
    for b in range(0, n, step):
        w.append({key: v[b: b + step] for key, v in rows.items()})
    if finalize:
        w.finalize()
    return w
