"""A byte-level BPE tokenizer's ids of many short texts, a word at a time from a cache: the same
ids as the tokenizer, at a fraction of its cost where text repeats its words.

Why: cross-tokenizer alignment tokenizes every example's text with the student's tokenizer in a
loader worker, and on 64-token rows that call is a large share of the worker's time
(benchmarks/align_bench.py). A byte-level BPE tokenizer (GPT-2, GPT-NeoX, Llama-3, Qwen) splits
text into words with a regex, then runs BPE on each word alone: a word's ids never depend on its
neighbours. So the text's ids are its words' ids one after the other, and a dict from word to ids,
filled by the tokenizer's own BPE model (``model.tokenize``), gives exactly the tokenizer's ids.

Exact by construction where it applies, and only there (``word_splitter`` says where): no
normalizer; a ``ByteLevel`` pre-tokenizer with its GPT-2 regex, or a ``Split`` regex (isolated)
before ``ByteLevel(use_regex=False)``; no prefix space; a BPE model without dropout; added tokens
all special. A text that holds a special token's content (the tokenizer would cut it out) or that
the regex does not cover end to end goes to the tokenizer itself, as does everything from a
tokenizer of another kind. Python's ``regex`` module stands in for the tokenizer's Oniguruma, whose
Unicode tables are older (U+0558, a letter since Unicode 11, is none to it): a text with a
character outside ASCII takes the cache only once the tokenizer's own pre-tokenizer has cut that
character, in a few contexts, where the regex does (``WordCache._agrees``, once per character).
"""
from __future__ import annotations

import json

import regex

__all__ = ["GPT2_PATTERN", "WordCache", "encode_texts", "word_splitter"]

# ByteLevel(use_regex=True)'s split (tokenizers' pre_tokenizers/byte_level.rs), as GPT-2's encoder.py
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MAX_WORDS = 1 << 17  # ~25 MB of cache per process; full → start over (the frequent words come back first)


def word_splitter(tokenizer) -> tuple[str | None, str]:
    """(the regex that splits text into the words BPE sees, "") where ``WordCache`` is exact for
    this fast HF tokenizer, else (None, why not)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None, "not a fast tokenizer"
    if backend.truncation is not None or backend.padding is not None or getattr(backend, "encode_special_tokens", False):
        return None, "truncation, padding or split special tokens set"
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        return None, "not a BPE model without dropout"
    if spec.get("normalizer") is not None:
        return None, "a normalizer"
    if any(not t.get("special") for t in spec.get("added_tokens") or []):
        return None, "added tokens that are not special"
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return GPT2_PATTERN, ""
    parts = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(parts) == 2 and parts[0].get("type") == "Split"
            and "Regex" in (parts[0].get("pattern") or {}) and parts[0].get("behavior") == "Isolated"
            and not parts[0].get("invert") and parts[1].get("type") == "ByteLevel"
            and not parts[1].get("use_regex", True) and not parts[1].get("add_prefix_space")):
        return parts[0]["pattern"]["Regex"], ""
    return None, "a pre-tokenizer other than byte-level BPE's regex split"


def _bytes_to_chars() -> list[str]:
    """GPT-2's bytes_to_unicode: byte b → the printable char ByteLevel writes for it."""
    from kdstream.text.token_bytes import _byte_decoder

    out = [""] * 256
    for char, b in _byte_decoder().items():
        out[b] = char
    return out


class WordCache:
    """``encode(texts)``: ``encode_texts(tokenizer, texts)``'s ids, from a per-process word cache
    where ``word_splitter`` allows it. Picklable (a DataLoader worker starts with an empty cache)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._ready = False

    def __getstate__(self) -> dict:
        return {"tokenizer": self.tokenizer, "_ready": False}

    def _setup(self) -> None:
        pattern, self.why_not = word_splitter(self.tokenizer)
        compiled = regex.compile(pattern) if pattern else None
        if compiled is not None and compiled.groups:  # findall would give the groups, not the words
            compiled, self.why_not = None, "a split regex with capturing groups"
        self.split = compiled.findall if compiled is not None else None
        if compiled is not None:
            specials = sorted({t.content for t in self.tokenizer.backend_tokenizer.get_added_tokens_decoder().values()},
                              key=len, reverse=True)
            # one search per text for any special token's content (None: the tokenizer has none)
            self.special = regex.compile("|".join(map(regex.escape, specials))).search if specials else None
            self.model = self.tokenizer.backend_tokenizer.model
            self.pre_tokenize = self.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str
            self.chars = _bytes_to_chars()
        self.words: dict[str, list[int]] = {}
        self.agrees: dict[str, bool] = {}  # non-ASCII character → whether both engines cut it alike
        self._ready = True

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids, no special tokens added (``encode_texts``)."""
        if not self._ready:
            self._setup()
        if self.split is None:
            return encode_texts(self.tokenizer, texts)
        out: list = []
        rest: list[int] = []  # texts the tokenizer itself encodes
        words, split, special = self.words, self.split, self.special
        for i, text in enumerate(texts):
            skip = not (text.isascii() or self._known(text)) or (special is not None and special(text))
            pieces = None if skip else split(text)
            if pieces is None or sum(map(len, pieces)) != len(text):
                out.append(None)
                rest.append(i)
                continue
            ids: list[int] = []
            for w in pieces:
                got = words.get(w)
                ids += got if got is not None else self._word(w)
            out.append(ids)
        if rest:
            for i, ids in zip(rest, encode_texts(self.tokenizer, [texts[i] for i in rest])):
                out[i] = ids
        return out

    def _known(self, text: str) -> bool:
        """Whether every character of a text outside ASCII is one both engines cut alike."""
        agrees = self.agrees
        for c in set(text):
            ok = agrees.get(c)
            if ok is None:
                ok = agrees[c] = c.isascii() or self._agrees(c)
            if not ok:
                return False
        return True

    def _agrees(self, c: str) -> bool:
        """Whether the tokenizer's pre-tokenizer and the regex cut ``c`` alike next to letters,
        digits, spaces, newlines, an apostrophe and itself (the classes the split regexes use)."""
        probe = f"a{c}{c} b{c}1 {c}x\n{c}  {c}'s x'{c} {c}\r\n{c}.{c}"
        return [w for w, _ in self.pre_tokenize(probe)] == [self._mapped(w) for w in self.split(probe)]

    def _mapped(self, word: str) -> str:
        """A word as ByteLevel writes it: each UTF-8 byte as its printable char."""
        return "".join(self.chars[b] for b in word.encode("utf-8"))

    def _word(self, word: str) -> list[int]:
        """A word's ids from the BPE model, as the tokenizer runs it on the ByteLevel-mapped word."""
        ids = [t.id for t in self.model.tokenize(self._mapped(word))]
        if len(self.words) >= MAX_WORDS:
            self.words.clear()
        self.words[word] = ids
        return ids


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """The tokenizer's ids of each text, no special tokens added: ``tokenizer(texts,
    add_special_tokens=False)["input_ids"]``, through the Rust tokenizer's ``encode_batch_fast``
    (ids only, no offsets: the spans come from the tokens' byte lengths) where there is one and
    it is set up as the call leaves it (no truncation, no padding, special tokens not split)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    plain = (backend is not None and hasattr(backend, "encode_batch_fast") and backend.truncation is None
             and backend.padding is None and getattr(backend, "encode_special_tokens", False) == split)
    if plain:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]
