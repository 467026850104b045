"""Extraction on vLLM: greedy generation and teacher-forced top-2 scoring on one engine.

The engine is started with ``max_logprobs=2`` and raw logprobs so the same ``LLM`` serves both
``--method generate`` and ``--method fast`` (one start-up instead of two).
"""
from __future__ import annotations

import numpy as np

from kdstream.engines.vllm import EngineOptions, make_llm, prompt_logprobs_to_arrays

TOP = 2  # the fast path needs the best and the second-best token


class VllmBackend:
    name = "vllm"

    def __init__(self, model: str, max_model_len: int, engine: EngineOptions) -> None:
        self.llm = make_llm(model, max_model_len=max_model_len, engine=engine, max_logprobs=TOP)

    def greedy(self, prefixes: np.ndarray, n: int) -> np.ndarray:
        """prefixes (B, P) → generated (B, n) token ids."""
        from vllm import SamplingParams

        # ignore_eos alone gives exactly n tokens. No min_tokens: vLLM's min_tokens masks EOS
        # (even with ignore_eos), which silently replaces an EOS argmax by the runner-up, so a
        # suffix that crosses a document boundary could never be reproduced.
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)
        outputs = self.llm.generate(_prompts(prefixes), params, use_tqdm=False)
        gen = [list(o.outputs[0].token_ids) for o in outputs]
        if any(len(g) != n for g in gen):
            raise RuntimeError(f"vLLM stopped before {n} tokens despite ignore_eos")
        return np.asarray(gen, dtype=np.int64)

    def greedy_each(self, prompts: list[np.ndarray], lengths: np.ndarray) -> list[np.ndarray]:
        """prompts [(P_i,)], lengths (B,) → [(lengths[i],)] generated ids: one request each, with
        its own max_tokens (the same greedy, EOS-ignoring parameters as ``greedy``)."""
        from vllm import SamplingParams

        params = [SamplingParams(temperature=0.0, max_tokens=int(k), ignore_eos=True, detokenize=False)
                  for k in lengths]
        outputs = self.llm.generate(_prompts(prompts), params, use_tqdm=False)
        gen = [np.asarray(o.outputs[0].token_ids, np.int64) for o in outputs]
        if any(len(g) != k for g, k in zip(gen, lengths)):
            raise RuntimeError("vLLM stopped before max_tokens despite ignore_eos")
        return gen

    def score_suffix(self, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """ids (B, T) → argmax ids (B, n) and top1 − top2 logprob (B, n) for the last n tokens.

        One prefill per sequence with ``prompt_logprobs=2`` (flat, no detokenization; the one
        sampled token is discarded), parsed in bulk by engines.vllm's parser (the teacher pass's too).
        """
        from vllm import SamplingParams


        params = SamplingParams(max_tokens=1, prompt_logprobs=TOP, flat_logprobs=True, detokenize=False)
        outputs = self.llm.generate(_prompts(ids), params, use_tqdm=False)
        rows = [prompt_logprobs_to_arrays(o.prompt_logprobs, row, TOP) for o, row in zip(outputs, ids)]
        top_ids = np.stack([r["topk_ids"][-n:] for r in rows])  # (B, n, 2)
        top_lps = np.stack([r["topk_logprobs"][-n:] for r in rows])  # (B, n, 2)
        return top_ids[..., 0], top_lps[..., 0] - top_lps[..., 1]


def _prompts(ids) -> list:
    """(B, P) array or a list of (P_i,) arrays → vLLM token prompts."""
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=np.asarray(row).tolist()) for row in ids]
