"""Model folders that would crash a run or run code: config.json's vocab_size disagreeing with
the weights, a vocabulary smaller than the tokenizer's, an unknown model_type whose code the
folder carries (auto_map), and only pickled weights. Each is one line naming the folder and the
fix, from every command that loads a model, before any work; the pickle is never loaded."""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import make_gpt_neox, precompute_args, run_cli

# A pickle that, if unpickled, creates the file named after it (so a load would be seen).
_PICKLE = b"cos\nsystem\n(S'touch {marker}'\ntR."


def _broken(kind, tmp_path, teacher_dir, tokenizer):
    if kind == "small-vocab":
        return make_gpt_neox(tmp_path / kind, tokenizer, seed=2, vocab=400)
    d = shutil.copytree(teacher_dir, tmp_path / kind)
    config = json.loads((d / "config.json").read_text())
    if kind == "vocab-mismatch":
        config["vocab_size"] = 600
    elif kind == "custom-code":
        config.update(model_type="acme-lm", architectures=["AcmeForCausalLM"],
                      auto_map={"AutoConfig": "configuration_acme.AcmeConfig",
                                "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"})
        (d / "modeling_acme.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    elif kind == "pickled":
        (d / "model.safetensors").unlink()
        (d / "pytorch_model.bin").write_bytes(_PICKLE.replace(b"{marker}", str(tmp_path / "ran").encode()))
    (d / "config.json").write_text(json.dumps(config))
    return d


_EXPECTED = {
    "vocab-mismatch": "config.json has vocab_size 600 but embed_out.weight in model.safetensors has 512 rows: "
                      "set vocab_size to 512",
    "small-vocab": "has a vocabulary of 400 but its tokenizer has 512 tokens",
    "custom-code": "has model_type 'acme-lm', which transformers",
    "pickled": "has only pickled weights (pytorch_model.bin): kdstream loads safetensors weights only",
}


@pytest.mark.parametrize("kind", list(_EXPECTED))
@pytest.mark.parametrize("command", ["precompute-logits", "distill", "extract-eval", "features"])
def test_a_broken_model_folder_is_one_line(command, kind, tmp_path, teacher_dir, tokenizer, corpus_file,
                                           second_store, digest, error_line):
    model = _broken(kind, tmp_path, teacher_dir, tokenizer)
    out = tmp_path / "out"
    args = {
        "precompute-logits": precompute_args(model, corpus_file, out, "--max-examples", 8, "--backend", "hf"),
        "distill": ["distill", "--logits-store", second_store, "--model", model, "--epochs", 1, "--out", out],
        "extract-eval": ["extract-eval", "--model", model, "--logits-store", second_store, "--backend", "hf",
                         "--prefix-len", 16, "--suffix-len", 16, "--out", out],
        "features": ["features", "--model", model, "--logits-store", second_store, "--prefix-len", 16,
                     "--suffix-len", 16, "--out", out],
    }[command]
    before = digest(model)
    line = error_line(run_cli(*args, check=False))
    assert str(model) in line and _EXPECTED[kind] in line, line
    assert digest(model) == before and not out.exists() and not (tmp_path / "out.partial").exists()
    assert not (tmp_path / "ran").exists()
