"""`kdstream reproduce` on a chat dataset: what changes when an example is a conversation.

- Examples: one per conversation, the loss at its assistant targets (precompute-logits and
  `distill --dataset` read the dataset alike: data/dataset_examples.py); the teacher trains on
  the conversations with CE, the baseline and the student from the teacher's store of them.
- Tiny models: their BPE is trained on the messages' text, with ChatML's special tokens and template.
- Extraction: each conversation's first answer, greedy from its prompt (no ``prefix_len``).
- No canaries: a planted canary would be a conversation of its own, which the protocol does not make.
- Students share the teacher's tokenizer (extract-eval does not yet judge conversations across tokenizers).
"""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

from kdstream.errors import KdError


@lru_cache(maxsize=8)
def holds_conversations(dataset: str, split: str) -> bool:
    """Whether ``dataset`` is read as conversations (as precompute-logits reads it, --format auto:
    by its first row). A .jsonl file is judged by its first line alone: a text corpus of millions
    of rows is not read twice."""
    import json

    from kdstream.data.conversations import read_rows, row_format
    from kdstream.data.dataset_examples import is_chat

    path = Path(dataset)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            first = next((line for line in f if line.strip()), "")
        try:
            return row_format(json.loads(first)) is not None
        except json.JSONDecodeError:
            return False  # the corpus loader names the bad line
    return is_chat(read_rows(dataset, split), "auto")


def check_conversation_study(cfg) -> None:
    """One-line errors for what the protocol does not do on conversations, and a note for the
    canaries it skips (before the study directory is made)."""
    if cfg.student_tokenizer:
        raise KdError(f"dataset {cfg.dataset} holds conversations, and `kdstream features` cannot yet score a student "
                      "of another tokenizer on them (extract-eval can): drop student_tokenizer")
    if cfg.canary_counts:
        print(f"[study] {cfg.dataset} holds conversations: no canaries are planted (a canary would be a "
              "conversation of its own); canary_counts is not used", file=sys.stderr)


def conversation_texts(dataset: str, split: str) -> list[str]:
    """Every message's text, in order: what a tiny model's tokenizer is trained on."""
    from kdstream.data.conversations import conversations_of, read_rows

    rows = read_rows(dataset, split)
    return [m["content"] for messages in conversations_of(rows, dataset).items for m in messages]


def train_chat_tokenizer(texts: list[str], vocab_size: int, out: Path):
    """A byte-level BPE with ChatML's special tokens and template, saved in ``out``."""
    from kdstream.text.chat import CHATML_SPECIALS, CHATML_TEMPLATE
    from kdstream.text.tokenizers import train_bpe_tokenizer

    return train_bpe_tokenizer(texts, vocab_size, out, CHATML_SPECIALS, CHATML_TEMPLATE)
