"""extract-eval of a model whose tokenizer differs from the examples' (the store's, the teacher's).

The prefix and the suffix are cut in the examples' (teacher's) tokens exactly as in a
same-tokenizer run, then each becomes bytes through the teacher tokenizer's byte table
(text/align.py: byte-level "Ġ" pieces through the GPT-2 byte decoder, SentencePiece "▁" and
<0xNN> pieces, special tokens as their content). The prefix's text is tokenized for the model
by align's ``Aligner`` (no special tokens added, as the same-tokenizer path adds none; a teacher
special token becomes the model's matching one), the model decodes greedily, and the verdict is
on bytes: exact match iff the generated tokens' bytes start with the suffix's bytes
(metrics.byte_match_metrics).

Tokens to generate: as many as the suffix has bytes. Every token stands for at least one byte,
so a generation that reproduces the suffix covers it within that many tokens, whatever way the
model splits it: the bound never cuts a match short. The price: decoding runs that many steps
(EOS ignored, no early stop on a divergence), the tokenizer's bytes per token times a
same-tokenizer run's.

An example is skipped, with a reason, when its prefix or suffix bytes are not whole UTF-8 (a
character cut by a window edge: ``invalid_utf8``), when the model's tokens of the prefix text do
not give it back (a normaliser, an unknown character: ``no_round_trip``), when a side holds no
byte (``empty``), or when the model's prefix tokens plus the bound exceed its context
(``context``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SKIP_REASONS = ("invalid_utf8", "no_round_trip", "empty", "context")  # align.SKIP_REASONS + context
SAME, CROSS = "same_tokenizer", "cross_tokenizer"  # the ``mode`` of an evaluation


@dataclass(frozen=True)
class Windows:
    """One prefix length's examples, as the model sees them. S examples.

    prompts: the model's token ids of each prefix text (None when skipped).
    suffix: the suffix's bytes (None when skipped).
    skip: None, or the reason (one of SKIP_REASONS) the example is not judged.
    """

    prompts: list[np.ndarray | None]
    suffix: list[bytes | None]
    skip: list[str | None]

    @property
    def judged(self) -> np.ndarray:
        """(S,) indices of the examples to generate for."""
        return np.array([i for i, r in enumerate(self.skip) if r is None], np.int64)

    def max_new(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx),) tokens to generate: as many as the suffix has bytes."""
        return np.array([len(self.suffix[i]) for i in idx.tolist()], np.int64)

    def longest(self) -> int:
        """Prompt + generated tokens of the longest judged example (the engine's context)."""
        return max((len(self.prompts[i]) + len(self.suffix[i]) for i in self.judged.tolist()), default=1)


class ByteJudge:
    """Both tokenizers' byte tables, built once: the examples' windows for the model, and the
    bytes of what the model generates. Works with one tokenizer on both sides too (``--match
    bytes`` on a same-tokenizer model)."""

    def __init__(self, teacher_tokenizer, model_tokenizer) -> None:
        from kdstream.text.align import Aligner

        self.aligner = Aligner(teacher_tokenizer, model_tokenizer)
        self.teacher_bytes = self.aligner.t.tokens
        # The model's tokens as text: a special token that stands for a teacher one (same content,
        # else same role: align's map) reads as the teacher's, so an <eos> reproduced is a match.
        model_bytes = list(self.aligner.s.tokens)
        for t_id, m_id in self.aligner.specials.items():
            if m_id >= 0:
                model_bytes[m_id] = self.teacher_bytes[t_id]
        self.model_bytes = model_bytes

    def teacher_text(self, ids) -> bytes:
        return b"".join([self.teacher_bytes[i] for i in np.asarray(ids).tolist()])

    def model_text(self, ids) -> bytes:
        """The bytes of the model's token ids (L,)."""
        return b"".join([self.model_bytes[i] for i in np.asarray(ids).tolist()])

    def windows(self, prefixes: np.ndarray, suffixes: np.ndarray, context: int | None) -> Windows:
        """prefixes (S, P), suffixes (S, n) teacher ids → the model's prompts and the suffix bytes.

        ``context``: the model's maximum sequence length (None: unbounded)."""
        from kdstream.text.align import Skip

        prompts, texts, skips = [], [], []
        # one batch: a single tokenizer call and numpy over every prefix (align.Aligner.align_rows)
        for prefix, suffix, a in zip(prefixes, suffixes, self.aligner.align_batch(prefixes)):
            raw, want = self.teacher_text(prefix), self.teacher_text(suffix)
            reason = None
            if isinstance(a, Skip):
                reason = a.reason
            elif a.text.encode() != raw:  # align dropped a character cut at the prefix's edge
                reason = "invalid_utf8"
            elif not want:
                reason = "empty"
            else:
                try:
                    want.decode("utf-8")
                except UnicodeDecodeError:
                    reason = "invalid_utf8"
            if reason is None and context is not None and len(a.student_ids) + len(want) > context:
                reason = "context"
            prompts.append(None if reason else a.student_ids)
            texts.append(None if reason else want)
            skips.append(reason)
        return Windows(prompts, texts, skips)


def skip_counts(reasons) -> dict[str, int]:
    """{reason: n} over SKIP_REASONS (zeros included), then any other reason given (a conversation
    store's, extract/conversation_cross.py), from per-example reasons (None or NaN: judged)."""
    values = [r for r in reasons if isinstance(r, str)]
    return {r: values.count(r) for r in (*SKIP_REASONS, *sorted(set(values) - set(SKIP_REASONS)))}
