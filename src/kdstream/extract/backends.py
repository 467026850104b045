"""The one interface extraction needs from a model, and the two engines behind it.

A backend answers two questions about token sequences, with no text involved:

``greedy(prefixes (B, P), n) -> (B, n)``
    exactly n greedily decoded token ids per prefix (EOS ignored: decoding never stops early).
``greedy_each(prompts [(P_i,)], lengths (B,)) -> [(lengths[i],)]``
    the same for prompts of different lengths, each decoded for its own number of tokens (the
    cross-tokenizer path: extract/cross_tokenizer.py).
``score_suffix(ids (B, T), n) -> (argmax_ids (B, n), gap (B, n))``
    teacher forcing over the whole sequence: for each of the last n tokens ``ids[:, T-n+j]``,
    the model's argmax prediction from ``ids[:, :T-n+j]`` and the logprob gap between its best
    and second-best token (a near-tie indicator; raw logits, temperature 1).

vLLM (``backend="vllm"``, the default and the fast one) and HF transformers (``"hf"``, for models
vLLM cannot load) both implement it; ``make_backend`` picks one. A dict is enough: no registry.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from kdstream.engines.vllm import EngineOptions

BACKENDS = ("vllm", "hf")


class Backend(Protocol):
    name: str

    def greedy(self, prefixes: np.ndarray, n: int) -> np.ndarray: ...

    def greedy_each(self, prompts: list[np.ndarray], lengths: np.ndarray) -> list[np.ndarray]: ...

    def score_suffix(self, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]: ...


def make_backend(name: str, model: str, max_model_len: int, engine: EngineOptions, device: str = "auto") -> Backend:
    """Load the model once; both methods of the returned backend share it (``device``: hf only;
    vLLM places its engine itself)."""
    if name == "vllm":
        from kdstream.extract.vllm_backend import VllmBackend

        return VllmBackend(model, max_model_len, engine)
    from kdstream.extract.hf_backend import HfBackend

    return HfBackend(model, engine, device)
