"""engines.hf: the one HF loader and its single meaning of "auto" (dtype float32, device CUDA when
available)."""
from __future__ import annotations

import pytest
import torch

from helpers import make_gpt_neox
from kdstream.engines.hf import load_causal_lm, resolve_device, torch_dtype
from kdstream.errors import KdError


def test_auto_dtype_is_float32_and_names_map_to_torch():
    assert torch_dtype("auto") is torch.float32
    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(KdError, match="not a torch dtype"):
        torch_dtype("float33")


def test_auto_device_follows_cuda_and_cuda_without_gpu_is_refused():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(KdError, match="unknown"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(KdError, match="no GPU"):
            resolve_device("cuda")


def test_load_causal_lm_fp32_eval_on_the_device(tmp_path, tokenizer):
    model_dir = make_gpt_neox(tmp_path / "m", tokenizer, layers=1, hidden=32, heads=1)
    net = load_causal_lm(model_dir)
    assert net.dtype == torch.float32 and not net.training
    assert net.device.type == resolve_device("auto")
    half = load_causal_lm(model_dir, "bfloat16", "cpu")
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu"
    # a reload into a given class, refusing pickled weights (what a checkpoint resume does)
    again = load_causal_lm(model_dir, "float32", "cpu", cls=type(net), safetensors_only=True)
    assert type(again) is type(net)
    assert all(torch.equal(a, b) for a, b in zip(net.cpu().state_dict().values(), again.state_dict().values()))
