"""Teacher backend on vLLM: prompt logprobs on token prompts, converted to arrays in bulk."""
from __future__ import annotations

import numpy as np

from kdstream.engines.vllm import (
    EngineOptions,
    loaded_dtype,
    make_llm,
    prompt_logprobs_to_arrays,
    sample_logprobs_to_arrays,
)


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

    def score(self, input_ids: np.ndarray, lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``lengths`` (B,): each row's real tokens (conversations): only those are scored, the
        rest of its L-1 rows filled by ``pad_rows``."""
        from vllm.inputs import TokensPrompt

        from kdstream.precompute.backends import pad_rows

        rows_in = list(input_ids) if lengths is None else [row[: int(n)] for row, n in zip(input_ids, lengths)]
        prompts = [TokensPrompt(prompt_token_ids=row.tolist()) for row in rows_in]
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        rows = [pad_rows(prompt_logprobs_to_arrays(o.prompt_logprobs, ids, self.k), input_ids.shape[1] - 1)
                for o, ids in zip(outputs, rows_in)]
        return {key: np.stack([r[key] for r in rows]) for key in rows[0]}

    def generate(self, prompts: list[np.ndarray], seeds: list[int], generation: dict) -> list[tuple]:
        """One response per prompt (``generation``: the store's attribute of that name), each with
        its own sampler seed → ``[(tokens (n,), arrays of n rows, finish reason)]``, row j the
        distribution token j was drawn from (raw logprobs, T = 1)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(max_tokens=generation["max_new_tokens"], temperature=generation["temperature"],
                                 top_p=generation["top_p"], seed=seed, logprobs=self.k, flat_logprobs=True,
                                 detokenize=False, stop_token_ids=generation["stop_token_ids"])
                  for seed in seeds]
        requests = [TokensPrompt(prompt_token_ids=p.tolist()) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        written = []
        for o in outputs:
            c = o.outputs[0]
            tokens = np.asarray(c.token_ids, dtype=np.int64)
            written.append((tokens, sample_logprobs_to_arrays(c.logprobs, tokens, self.k), c.finish_reason))
        return written
