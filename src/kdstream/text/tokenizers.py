"""Tokenizer loading (the one place AutoTokenizer is called), the fingerprint that identifies a
tokenizer (match.py compares them), and small tokenizer trainers for the demo and the tests."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kdstream.errors import KdError

# Either file marks a directory that holds a tokenizer (a model saved without one has neither).
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json")


def has_tokenizer(directory: str | Path) -> bool:
    """Whether ``directory`` holds tokenizer files (TOKENIZER_MARKERS)."""
    return any((Path(directory) / f).exists() for f in TOKENIZER_MARKERS)


def load_tokenizer(path: str | Path):
    """A fast HF tokenizer from a model or tokenizer directory. Never runs code from it
    (trust_remote_code=False: an ``auto_map`` naming a tokenizer class in a .py file is ignored)."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise KdError(f"tokenizer directory {p} not found: pass a model directory that holds tokenizer files")
    try:
        return AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)
    except Exception as exc:
        raise KdError(
            f"no usable tokenizer in {p} ({exc.__class__.__name__}): save one there or pass --tokenizer DIR"
        ) from None


def tokenizer_fingerprint(tokenizer) -> dict:
    """``{"sha256", "vocab_size"}`` from the token → id map and special tokens.

    Two tokenizers with the same hash map every string to the same ids, which is what a teacher
    store and a student must share; file formats and names may differ.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    payload = json.dumps({"vocab": vocab, "special": sorted(map(str, tokenizer.all_special_tokens))})
    return {"sha256": hashlib.sha256(payload.encode()).hexdigest(), "vocab_size": len(vocab)}


def train_bpe_tokenizer(texts: list[str], vocab_size: int, out_dir: str | Path, specials: tuple[str, ...] = (),
                        chat_template: str | None = None):
    """Train a byte-level BPE tokenizer (GPT-NeoX style, ``<|endoftext|>`` = id 0) and save it;
    ``specials`` (e.g. a chat template's ``<|im_start|>``, ``<|im_end|>``) take the next ids, and
    ``chat_template`` is saved with it.

    Used by the demo, the study on conversations and the tests: no hub access is needed.
    Deterministic for the same texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    extra = {"additional_special_tokens": list(specials)} if specials else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>", **extra
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(str(out_dir))
    return fast


def train_sentencepiece_style_tokenizer(texts: list[str], vocab_size: int):
    """A Llama-2-style tokenizer ("▁" for spaces, one "▁" prepended, <0xNN> byte fallback, BPE
    merges) trained on ``texts``: a student tokenizer of another family than the byte-level BPE
    teacher, for cross-tokenizer tests and benchmarks without a model hub."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
