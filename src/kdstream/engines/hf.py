"""The one place a HF transformers causal LM is loaded from a directory.

Every caller (extraction's hf backend, features, the hf teacher pass, the student, a checkpoint's
weight reload, the store-vs-reference KL) goes through ``load_causal_lm`` so "auto" means the
same everywhere:

- ``dtype="auto"`` is float32: the reference precision of every HF path in kdstream (scores
  compared with vLLM's, perplexities, KL, fp32 training weights). A caller that wants the
  checkpoint's own dtype resolves it first and passes the name (the hf teacher pass does, to run
  as vLLM's ``auto`` would).
- ``device="auto"`` is CUDA when available, else CPU.
"""
from __future__ import annotations

from kdstream.errors import KdError
from kdstream.options import check_device


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is a KdError."""
    import torch

    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise KdError("--device cuda but torch sees no GPU: use --device cpu (or auto)")
    return device


def torch_dtype(dtype: str = "auto"):
    """``auto`` → torch.float32; otherwise the torch dtype of that name (KdError if there is none)."""
    import torch

    name = "float32" if dtype == "auto" else dtype
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise KdError(f"--dtype {dtype!r} is not a torch dtype: use auto | float32 | bfloat16 | float16")
    return value


def load_causal_lm(path, dtype: str = "auto", device: str = "auto", *, cls=None, safetensors_only: bool = True):
    """The causal LM saved in directory ``path``, in eval mode, on ``device``, weights in ``dtype``.

    ``cls``: the model class to load with (default ``AutoModelForCausalLM``; a checkpoint reload
    passes the class of the model it restores into). ``safetensors_only``: refuse pickled weights
    (a pickle can run code when loaded): the default everywhere.
    """
    if cls is None:
        from transformers import AutoModelForCausalLM as cls

    kwargs = {"use_safetensors": True} if safetensors_only else {}
    model = cls.from_pretrained(str(path), dtype=torch_dtype(dtype), **kwargs)
    return model.to(resolve_device(device)).eval()
