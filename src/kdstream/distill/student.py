"""Load the student (or a CE model): pretrained weights, or a fresh model from a config."""
from __future__ import annotations

from pathlib import Path

from kdstream.errors import KdError


def load_model_and_tokenizer(model: str, tokenizer: str | None, seed: int):
    """``model`` is a HF directory (weights → fine-tune; config.json only → random init from
    ``seed``) or a config .json file (random init; then ``tokenizer`` is required)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kdstream.engines.hf import load_causal_lm
    from kdstream.model_files import check_model_dir, check_tokenizer_fits, read_config
    from kdstream.text.tokenizers import load_tokenizer

    path = Path(model)
    if path.is_file() and path.suffix == ".json":
        if tokenizer is None:
            raise KdError(f"model {path} is a config file: pass --tokenizer DIR (the teacher's tokenizer)")
        cfg = read_config(path)
        vocab_size = cfg["vocab_size"]
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise KdError(f"config {path} has no model_type: write one (e.g. gpt_neox)")
        config = AutoConfig.for_model(model_type, **cfg)
        weights = False
    else:
        check_model_dir(path, "student", need_weights=False)  # config.json checked there
        vocab_size = read_config(path / "config.json")["vocab_size"]
        config = AutoConfig.from_pretrained(str(path))
        weights = any(f.suffix == ".safetensors" for f in path.iterdir())  # check_model_dir refuses pickles
    tok = load_tokenizer(tokenizer or path)
    check_tokenizer_fits(path, "student", tok, vocab_size)
    if weights:
        net = load_causal_lm(path, "float32", "cpu")  # fp32 weights; the trainer moves it to its device
    else:
        torch.manual_seed(seed)
        net = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return net, tok

