"""One place that starts a vLLM engine, for the teacher pass and for extraction, and the parser
of its flat prompt logprobs that both use.

vLLM is imported here, lazily, so `--help` and the library's non-engine paths stay fast.
Scripts that call this need the ``if __name__ == "__main__":`` guard (vLLM may spawn workers).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from kdstream.errors import KdError
from kdstream.options import option


@dataclass(frozen=True)
class EngineOptions:
    dtype: str = option("auto", "auto | float32 | bfloat16 | float16")
    seed: int = option(0, "Engine seed.")
    tensor_parallel_size: int = option(1, "GPUs one vLLM engine spans.")
    gpu_memory_utilization: float = option(0.9, "Share of GPU memory vLLM may take.")
    # None: eager on CPU (compilation costs minutes there)
    enforce_eager: bool | None = option(None, "Skip graph compilation (default: on for CPU, off for GPU).")
    # Larger steps amortize per-step overhead on long prompts; the cost is the activations (and
    # logits) of a bigger step.
    max_num_batched_tokens: int | None = option(None, "Tokens per vLLM engine step (default: vLLM's).")

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise KdError(f"--max-num-batched-tokens {self.max_num_batched_tokens} must be at least 1")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def import_vllm():
    """``import vllm`` with kdstream's defaults for its settings set first (the logging level is
    read at import); KdError when it is not installed."""
    # In-process engine core: no second interpreter to start and import vLLM again.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    # ERROR: at WARNING, vLLM 0.32 prints a traceback on every start when the tokenizer is skipped
    # ("Chat template warmup failed"), plus CPU tuning hints; set VLLM_LOGGING_LEVEL to see them.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        import vllm
        import vllm.config
    except ImportError:
        raise KdError("vLLM is not installed: `pip install 'kdstream[cpu]'` (or '[gpu]'), or use make install") from None
    return vllm


def make_llm(model: str, max_model_len: int, engine: EngineOptions, max_logprobs: int = 0):
    LLM = import_vllm().LLM
    eager = engine.enforce_eager if engine.enforce_eager is not None else not cuda_available()
    kwargs = dict(
        model=str(model),
        dtype=engine.dtype,
        seed=engine.seed,
        max_model_len=max_model_len,
        skip_tokenizer_init=True,  # token ids in, token ids out: no detokenization cost
        enforce_eager=eager,
        tensor_parallel_size=engine.tensor_parallel_size,
        load_format="safetensors",  # never a pickle (a pickle can run code when loaded)
    )
    if engine.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = engine.max_num_batched_tokens
    if cuda_available():
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
    if max_logprobs:
        # raw_logprobs: log-softmax of the unprocessed logits (T = 1); temperature is the loss's job.
        kwargs.update(max_logprobs=max_logprobs, logprobs_mode="raw_logprobs")
    try:
        return LLM(**kwargs)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
        raise KdError(f"vLLM could not load {model}: {first}") from None


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``: the names --dtype takes and the store records."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(model: str, engine: EngineOptions) -> str:
    """The dtype vLLM will run ``model`` in for ``engine.dtype``, without loading weights.

    vLLM's own rule (its ModelConfig: config.json and the platform's supported dtypes), so
    ``auto`` on a float32 checkpoint gives the 16-bit type vLLM picks, not ``auto``. Used to
    record the dtype in the store before the engine starts; the loaded engine's dtype is
    checked against it (``loaded_dtype``)."""
    import_vllm()
    from vllm.config import ModelConfig

    try:
        config = ModelConfig(model=str(model), dtype=engine.dtype, skip_tokenizer_init=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
        raise KdError(f"vLLM cannot run {model} with --dtype {engine.dtype}: {first}") from None
    return dtype_name(config.dtype)


def loaded_dtype(llm) -> str:
    """The dtype a started engine (``make_llm``) actually runs in."""
    return dtype_name(llm.llm_engine.model_config.dtype)


def prompt_logprobs_to_arrays(flat, input_ids: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """vLLM ``FlatLogprobs`` for one prompt → arrays with row t predicting input_ids[t+1].

    Position 0 of the prompt has no entry. Each later position p holds the true token first
    (with its rank, which may exceed k), then the top-k by rank: k+1 entries. Usually a single
    reshape; positions laid out otherwise fall back to a per-position parse.
    """
    return _flat_to_arrays(flat, 1, np.asarray(input_ids)[1:], k, "prompt logprobs are not aligned with the prompt tokens")


def sample_logprobs_to_arrays(flat, token_ids, k: int) -> dict[str, np.ndarray]:
    """vLLM ``FlatLogprobs`` of one generated sequence (``SamplingParams(logprobs=k)``) → arrays
    with row j the distribution generated token j was drawn from (the sampled token first, with
    its rank, then the top-k by rank, as for prompt logprobs)."""
    return _flat_to_arrays(flat, 0, np.asarray(token_ids), k, "sample logprobs are not aligned with the generated tokens")


def _flat_to_arrays(flat, first: int, targets: np.ndarray, k: int, misaligned: str) -> dict[str, np.ndarray]:
    """Positions ``first``.. of ``flat``, each the true (or sampled) token then the top-k: (n, k)
    arrays and the target's logprob and rank (n,), checked against ``targets`` (n,)."""
    n = len(targets)
    begin = flat.start_indices[first] if n else 0
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
        out = _parse_positions(flat, n, k, first)
    if not np.array_equal(out.pop("_target_id"), targets):
        raise RuntimeError(f"vLLM {misaligned}")
    return out


def _parse_positions(flat, n: int, k: int, first: int = 1) -> dict[str, np.ndarray]:
    topk_ids = np.zeros((n, k), np.int64)
    topk_lps = np.zeros((n, k), np.float32)
    target_id = np.zeros(n, np.int64)
    target_lp = np.zeros(n, np.float32)
    target_rank = np.zeros(n, np.int64)
    for t in range(n):
        s, e = flat.start_indices[t + first], flat.end_indices[t + first]
        ids, lps, ranks = flat.token_ids[s:e], flat.logprobs[s:e], flat.ranks[s:e]
        target_id[t], target_lp[t], target_rank[t] = ids[0], lps[0], ranks[0]
        ranked = sorted({r: (i, lp) for i, lp, r in zip(ids, lps, ranks) if r <= k}.items())
        if len(ranked) != k:
            raise RuntimeError(f"vLLM returned {len(ranked)} ranked entries at position {t + first}, expected {k}")
        topk_ids[t] = [i for _, (i, _) in ranked]
        topk_lps[t] = [lp for _, (_, lp) in ranked]
    return {
        "topk_ids": topk_ids,
        "topk_logprobs": topk_lps,
        "target_logprob": target_lp,
        "target_rank": target_rank,
        "_target_id": target_id,
    }
