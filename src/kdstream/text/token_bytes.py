"""The UTF-8 bytes each token of a tokenizer stands for: the unit of bits per byte, a loss that
does not depend on the tokenizer, and of cross-tokenizer alignment (text/align.py).

``byte_vocab`` reads a fast HF tokenizer's vocabulary once: byte-level BPE pieces ("Ġ" …) through
the GPT-2 byte decoder, SentencePiece pieces with "▁" as a space and ``<0xNN>`` byte-fallback
tokens as one byte each. Per-token byte strings, not ``decode`` of each token: a multi-byte
character split over byte tokens counts its bytes once (decoding one byte of it alone gives a
3-byte replacement character). A special token stands for its content ("<|endoftext|>": 13
bytes), as it appears in the decoded text.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from kdstream.errors import KdError

LN2 = float(np.log(2.0))  # nats per bit
BYTE_LEVEL = "byte_level"  # GPT-2 / GPT-NeoX / Llama-3 / Qwen: every byte is a printable char
METASPACE = "metaspace"  # SentencePiece (Llama-2, Mistral, Gemma): "▁" is a space, <0xNN> a byte
_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable char → byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _types(node) -> list[dict]:
    """Every component of a tokenizer.json decoder / pre-tokenizer / normalizer, Sequences flattened."""
    if not isinstance(node, dict):
        return []
    inner = node.get("decoders") or node.get("pretokenizers") or node.get("normalizers") or []
    return [node, *(t for child in inner for t in _types(child))]


def _scheme(spec: dict) -> str:
    parts = _types(spec.get("decoder")) + _types(spec.get("pre_tokenizer"))
    kinds = {p.get("type") for p in parts}
    if "ByteLevel" in kinds:
        return BYTE_LEVEL
    replaces_marker = any(p.get("type") == "Replace" and (p.get("pattern") or {}).get("String") == "▁"
                          for p in parts + _types(spec.get("normalizer")))
    if "Metaspace" in kinds or replaces_marker:
        return METASPACE
    raise KdError(f"tokenizer decoder {sorted(k for k in kinds if k)} is not byte-level BPE nor SentencePiece-style: "
                  "cross-tokenizer alignment supports those two (use a tokenizer of either kind)")


@dataclass(frozen=True)
class ByteVocab:
    """One tokenizer's byte string per id, built once (``byte_vocab``).

    tokens[i]: the bytes token i stands for in text (a special token: its content's UTF-8);
    lengths (V,) int64; special (V,) bool (atomic added tokens); fallback (V,) bool (<0xNN> tokens);
    data (sum of lengths,) uint8: every token's bytes one after the other, token i's from starts[i] (V,).
    """

    tokens: list[bytes]
    lengths: np.ndarray
    special: np.ndarray
    fallback: np.ndarray
    scheme: str
    data: np.ndarray
    starts: np.ndarray

    def bytes_of(self, ids: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """(ends[-1],) uint8: the bytes of tokens ids (n,) one after the other, ``b"".join`` of their
        byte strings as one numpy gather (a Python join costs more on a batch's ~1,000 tokens);
        ends (n,): the running sum of their lengths."""
        lens = self.lengths[ids]
        return self.data[np.repeat(self.starts[ids] - (ends - lens), lens) + np.arange(ends[-1] if len(ends) else 0)]


def byte_vocab(tokenizer) -> ByteVocab:
    """The byte string of every token of a fast HF tokenizer (see the module docstring)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    scheme = _scheme(spec)
    byte_fallback = bool((spec.get("model") or {}).get("byte_fallback"))
    vocab = tokenizer.get_vocab()  # token string → id, added tokens included
    size = max(vocab.values()) + 1
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    decoder = _byte_decoder()
    tokens = [b""] * size
    special = np.zeros(size, bool)
    fallback = np.zeros(size, bool)
    for piece, i in vocab.items():
        if scheme == METASPACE and byte_fallback and (m := _FALLBACK.match(piece)):
            tokens[i] = bytes([int(m.group(1), 16)])  # <0xNN>, in the model's vocabulary or added
            fallback[i] = True
        elif i in added:  # added tokens are stored as their raw content, never byte-mapped
            tokens[i] = added[i].content.encode()
            special[i] = bool(added[i].special)
        elif scheme == BYTE_LEVEL:
            try:
                tokens[i] = bytes(decoder[c] for c in piece)
            except KeyError:  # not a byte-level piece (a hand-added token): its own text
                tokens[i] = piece.encode()
        else:
            tokens[i] = piece.replace("▁", " ").encode()
    lengths = np.fromiter(map(len, tokens), np.int64, size)
    data = np.frombuffer(b"".join(tokens), np.uint8)
    return ByteVocab(tokens, lengths, special, fallback, scheme, data, np.cumsum(lengths) - lengths)


def token_byte_lengths(tokenizer, ids) -> np.ndarray:
    """ids (any shape) → int64 array of the same shape: the UTF-8 bytes each token stands for.

    ``tokenizer``: a fast HF tokenizer, or its ``ByteVocab`` (build it once for repeated calls).
    Exact for byte-level BPE and SentencePiece with byte fallback. A SentencePiece tokenizer that
    prepends "▁" to a text gives its first token one byte the text does not have: the first
    token has no log-prob anyway, so bits per byte over predicted tokens 1.. never counts it.
    """
    vocab = tokenizer if isinstance(tokenizer, ByteVocab) else byte_vocab(tokenizer)
    return vocab.lengths[np.asarray(ids, np.int64)]


def bits_per_byte(nats, num_bytes):
    """Total negative log-likelihood in nats over some text ÷ ln 2 ÷ its UTF-8 bytes, NaN without
    bytes: a unit that does not depend on the tokenizer. ``nats`` and ``num_bytes``: numbers or
    arrays of one shape (one value per text) → float64 of that shape."""
    nats, num_bytes = np.asarray(nats, np.float64), np.asarray(num_bytes, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(num_bytes > 0, nats / (num_bytes * LN2), np.nan)

