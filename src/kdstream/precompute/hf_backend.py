"""Teacher backend on HF transformers: one batched forward, the LM head applied a chunk at a time.

For teachers vLLM cannot load, and for machines without vLLM. The model runs once per batch up
to its last hidden states (B, L, H); the LM head, the fp32 log-softmax and the top-k then run
over ``chunk_positions`` positions at a time, so the fp32 (B, L, V) logits never exist (at
B·L = 64·256 and V = 49k they would be 3.2 GB) — only a (chunk, V) slice does.

The arrays equal VllmTeacher's (same shapes, dtypes and meanings), computed the way vLLM's
``raw_logprobs`` mode computes them: logits in the model's dtype, log-softmax in fp32, ``topk``,
and the true token's rank as the number of vocabulary entries whose logprob is >= its own.
"""
from __future__ import annotations

import numpy as np

from kdstream.errors import KdError

CHUNK_POSITIONS = 1024  # positions per LM-head chunk: (1024, V) fp32 = 200 MB at V = 49k

def resolve_dtype(dtype: str, config: dict, cuda: bool) -> str:
    """``--dtype`` for transformers: ``auto`` is the config's dtype on a GPU and float32 on CPU
    (CPU half-precision matmuls are slow or missing); otherwise the name as given."""
    if dtype != "auto":
        return dtype
    if not cuda:
        return "float32"
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


class HfTeacher:
    """``score(input_ids (B, L))`` → top-k and true-token arrays for the L-1 predicted positions."""

    name = "hf"

    def __init__(self, model: str, top_k: int, dtype: str = "auto", chunk_positions: int = CHUNK_POSITIONS,
                 device: str = "auto") -> None:
        from kdstream.engines.hf import load_causal_lm, resolve_device
        from kdstream.model_files import logit_postprocessing, model_config

        config = model_config(model)
        capped = logit_postprocessing(config)
        if capped:
            raise KdError(f"the hf backend applies the plain LM head, but {model} post-processes its logits "
                          f"({capped}): use --backend vllm")
        if chunk_positions < 1:
            raise KdError(f"chunk_positions {chunk_positions} must be at least 1")
        self.k = top_k
        self.chunk = chunk_positions
        self.device = resolve_device(device)
        # the teacher's own "auto" (the config's dtype on a GPU), resolved before engines.hf's fp32 "auto"
        self.model = load_causal_lm(model, resolve_dtype(dtype, config, self.device == "cuda"), self.device)
        self.dtype = str(self.model.dtype).removeprefix("torch.")  # as loaded, not as requested
        # The decoder without its head: GPTNeoXModel, LlamaModel, … (last_hidden_state is after
        # the final norm). The head alone is then applied chunk by chunk.
        self.body = self.model.base_model
        self.head = self.model.get_output_embeddings()
        if self.body is self.model or self.head is None:
            raise KdError(f"{model} is not a causal LM with a separate output layer: use --backend vllm")

    def score(self, input_ids: np.ndarray, lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``lengths`` (B,): each row's real tokens (conversations): the batch is cut after the
        longest (a causal model's earlier rows never see the padding), the rows past it filled."""
        if lengths is not None and int(max(lengths)) < input_ids.shape[1]:
            from kdstream.precompute.backends import pad_rows

            return pad_rows(self.score(input_ids[:, : max(int(max(lengths)), 2)]), input_ids.shape[1] - 1, axis=1)
        import torch

        b, length = input_ids.shape
        n = length - 1
        with torch.inference_mode():
            ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)  # (B, L)
            # Every example has the same length: no padding, no attention mask.
            hidden = self.body(input_ids=ids, use_cache=False).last_hidden_state  # (B, L, H), model dtype
            # Row t predicts token t+1: the last position predicts nothing we store.
            hidden = hidden[:, :-1].reshape(b * n, -1)  # (N, H), N = B·(L-1)
            targets = ids[:, 1:].reshape(b * n, 1)  # (N, 1)
            parts = [self._score_chunk(hidden[s : s + self.chunk], targets[s : s + self.chunk])
                     for s in range(0, b * n, self.chunk)]
        out = {key: torch.cat([p[key] for p in parts]).cpu().numpy() for key in parts[0]}
        return {
            "topk_ids": out["topk_ids"].astype(np.int64).reshape(b, n, self.k),  # (B, L-1, k)
            "topk_logprobs": out["topk_logprobs"].reshape(b, n, self.k),  # (B, L-1, k) fp32
            "target_logprob": out["target_logprob"].reshape(b, n),  # (B, L-1) fp32
            "target_rank": out["target_rank"].astype(np.int64).reshape(b, n),  # (B, L-1)
        }

    def _score_chunk(self, hidden, targets) -> dict:
        """hidden (n, H), targets (n, 1) → top-k ids/logprobs (n, k), target logprob and rank (n,)."""
        import torch

        # Logits in the model's dtype (as vLLM computes them), log-softmax in fp32.
        logprobs = torch.log_softmax(self.head(hidden).float(), dim=-1)  # (n, V) fp32
        top = torch.topk(logprobs, self.k, dim=-1)  # sorted, descending
        target = logprobs.gather(-1, targets)  # (n, 1)
        # vLLM's rank: entries >= the true token's logprob (1 = argmax; a tie counts against it).
        rank = (logprobs >= target).sum(-1)  # (n,)
        return {"topk_ids": top.indices, "topk_logprobs": top.values, "target_logprob": target[:, 0],
                "target_rank": rank}
