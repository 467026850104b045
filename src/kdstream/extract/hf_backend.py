"""Extraction on HF transformers, for models vLLM cannot load (much slower: see
docs/benchmarks.md). Batched; every prefix of a batch has the same length, so no padding
(``greedy_each`` groups prompts of different lengths by length)."""
from __future__ import annotations

import numpy as np

from kdstream.engines.vllm import EngineOptions

LOGITS_BUDGET = 256 << 20  # bytes of fp32 logits (rows x n x V x 4) materialized per forward


class HfBackend:
    name = "hf"

    def __init__(self, model: str, engine: EngineOptions, device: str = "auto") -> None:
        from kdstream.engines.hf import load_causal_lm

        # engines.hf's "auto" dtype is float32, the reference precision (vLLM's auto follows the config).
        self.model = load_causal_lm(model, engine.dtype, device)
        self.device = self.model.device
        self.vocab = int(self.model.get_output_embeddings().weight.shape[0])

    def greedy(self, prefixes: np.ndarray, n: int) -> np.ndarray:
        """prefixes (B, P) → generated (B, n): HF ``generate``, greedy, exactly n new tokens.

        ``eos_token_id=None`` disables stopping without masking EOS (``min_new_tokens`` would
        mask it and change the argmax), which is what vLLM's ``ignore_eos`` does.
        """
        import torch

        ids = torch.as_tensor(prefixes, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                eos_token_id=None, pad_token_id=0, repetition_penalty=1.0,
            )
        return out[:, ids.shape[1]:].cpu().numpy().astype(np.int64)

    def greedy_each(self, prompts: list[np.ndarray], lengths: np.ndarray) -> list[np.ndarray]:
        """prompts [(P_i,)], lengths (B,) → [(lengths[i],)]: ``greedy`` per group of prompts of
        one length, for the group's largest count, each cut to its own (greedy decoding's first k
        tokens do not depend on how many follow)."""
        lengths = np.asarray(lengths, np.int64)
        out: list[np.ndarray | None] = [None] * len(prompts)
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        for idx in by_len.values():
            gen = self.greedy(np.stack([prompts[i] for i in idx]), int(lengths[idx].max()))  # (b, max)
            for row, i in zip(gen, idx):
                out[i] = row[: lengths[i]]
        return out

    def score_suffix(self, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """ids (B, T) → argmax ids (B, n) and top1 − top2 logprob (B, n) for the last n tokens.

        Only the n positions that predict the suffix go through the LM head
        (``logits_to_keep``), upcast to fp32 a few rows at a time so the (rows, n, V) fp32
        logits stay under LOGITS_BUDGET whatever the batch size.
        """
        import torch

        rows = max(1, LOGITS_BUDGET // (n * self.vocab * 4))
        argmax, gap = [], []
        with torch.inference_mode():
            for b in range(0, len(ids), rows):
                x = torch.as_tensor(ids[b : b + rows], dtype=torch.long, device=self.device)
                # logits at position t predict token t+1: the suffix's n tokens need positions
                # T-n-1 .. T-2, i.e. the last n+1 kept positions without the final one.
                logits = self.model(x, logits_to_keep=n + 1).logits[:, :-1].float()  # (rows, n, V)
                top = torch.topk(logits, 2, dim=-1)  # the gap in logits equals the gap in logprobs
                argmax.append(top.indices[..., 0].cpu())
                gap.append((top.values[..., 0] - top.values[..., 1]).cpu())
        return torch.cat(argmax).numpy().astype(np.int64), torch.cat(gap).numpy().astype(np.float32)
