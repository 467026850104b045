"""Teacher backend on vLLM: prompt logprobs on token prompts, converted to arrays in bulk."""
from __future__ import annotations

import numpy as np

from kdstream.engines.vllm import EngineOptions, loaded_dtype, make_llm, prompt_logprobs_to_arrays


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
        rows = [prompt_logprobs_to_arrays(o.prompt_logprobs, ids, self.k) for o, ids in zip(outputs, input_ids)]
        return {key: np.stack([r[key] for r in rows]) for key in rows[0]}
