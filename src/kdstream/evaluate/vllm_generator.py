"""Greedy continuation with vLLM: exactly n new tokens per prefix, EOS ignored, ids only."""
from __future__ import annotations

import numpy as np

from kdstream.vllm_engine import EngineOptions, make_llm


class VllmGenerator:
    name = "vllm"

    def __init__(self, model: str, max_model_len: int, engine: EngineOptions) -> None:
        self.llm = make_llm(model, max_model_len=max_model_len, engine=engine)

    def greedy(self, prefixes: np.ndarray, n: int) -> np.ndarray:
        """prefixes (B, P) → generated (B, n) token ids."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True, detokenize=False
        )
        prompts = [TokensPrompt(prompt_token_ids=row.tolist()) for row in prefixes]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return np.asarray([list(o.outputs[0].token_ids) for o in outputs], dtype=np.int64)
