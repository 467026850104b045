"""Teacher backend on vLLM: prompt logprobs on token prompts, converted to arrays in bulk."""
from __future__ import annotations

import numpy as np

from kdstream.vllm_engine import EngineOptions, loaded_dtype, make_llm


class VllmTeacher:
    """``score(input_ids (B, L))`` → top-k and true-token arrays for the L-1 predicted positions."""

    name = "vllm"

    def __init__(self, model: str, top_k: int, max_model_len: int, engine: EngineOptions) -> None:
        from vllm import SamplingParams

        self.k = top_k
        self.llm = make_llm(model, max_model_len=max_model_len, engine=engine, max_logprobs=top_k)
        self.dtype = loaded_dtype(self.llm)  # as the engine resolved --dtype (auto on fp32 weights: 16-bit)
        # max_tokens=1: we only want the prompt's logprobs; the one sampled token is discarded.
        self.params = SamplingParams(
            max_tokens=1, prompt_logprobs=top_k, flat_logprobs=True, detokenize=False, temperature=1.0
        )

    def score(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=row.tolist()) for row in input_ids]
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        rows = [_prompt_logprobs_to_arrays(o.prompt_logprobs, ids, self.k) for o, ids in zip(outputs, input_ids)]
        return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


def _prompt_logprobs_to_arrays(flat, input_ids: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """vLLM ``FlatLogprobs`` for one prompt → arrays with row t predicting input_ids[t+1].

    Position 0 of the prompt has no entry. Each later position p holds the true token first
    (with its rank, which may exceed k), then the top-k by rank: k+1 entries. Usually a single
    reshape; positions laid out otherwise fall back to a per-position parse.
    """
    n = len(input_ids) - 1
    begin = flat.start_indices[1]
    ids = np.asarray(flat.token_ids[begin:], dtype=np.int64)
    lps = np.asarray(flat.logprobs[begin:], dtype=np.float32)
    ranks = np.asarray(flat.ranks[begin:], dtype=np.int64)
    if ids.size == n * (k + 1):
        ids, lps, ranks = ids.reshape(n, k + 1), lps.reshape(n, k + 1), ranks.reshape(n, k + 1)
        out = {
            "topk_ids": ids[:, 1:],  # (L-1, k)
            "topk_logprobs": lps[:, 1:],  # (L-1, k)
            "target_logprob": lps[:, 0],  # (L-1,)
            "target_rank": ranks[:, 0],  # (L-1,)
            "_target_id": ids[:, 0],
        }
    else:
        out = _parse_positions(flat, n, k)
    if not np.array_equal(out.pop("_target_id"), input_ids[1:]):
        raise RuntimeError("vLLM prompt logprobs are not aligned with the prompt tokens")
    return out


def _parse_positions(flat, n: int, k: int) -> dict[str, np.ndarray]:
    topk_ids = np.zeros((n, k), np.int64)
    topk_lps = np.zeros((n, k), np.float32)
    target_id = np.zeros(n, np.int64)
    target_lp = np.zeros(n, np.float32)
    target_rank = np.zeros(n, np.int64)
    for t in range(n):
        s, e = flat.start_indices[t + 1], flat.end_indices[t + 1]
        ids, lps, ranks = flat.token_ids[s:e], flat.logprobs[s:e], flat.ranks[s:e]
        target_id[t], target_lp[t], target_rank[t] = ids[0], lps[0], ranks[0]
        ranked = sorted({r: (i, lp) for i, lp, r in zip(ids, lps, ranks) if r <= k}.items())
        if len(ranked) != k:
            raise RuntimeError(f"vLLM returned {len(ranked)} ranked entries at position {t + 1}, expected {k}")
        topk_ids[t] = [i for _, (i, _) in ranked]
        topk_lps[t] = [lp for _, (_, lp) in ranked]
    return {
        "topk_ids": topk_ids,
        "topk_logprobs": topk_lps,
        "target_logprob": target_lp,
        "target_rank": target_rank,
        "_target_id": target_id,
    }
