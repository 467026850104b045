"""A dataset's training examples, text or chat: plain text packed into windows, conversations one
per example with the positions the loss is on. precompute-logits and `distill --dataset` read a
dataset the same way, so a CE model trained on the dataset sees the examples a store would hold."""
from __future__ import annotations

import hashlib
import sys

from kdstream.errors import KdError
from kdstream.text.chat import ChatOptions


def is_chat(rows: list[dict] | None, fmt: str) -> bool:
    """Whether rows read by ``read_rows`` are conversations under ``--format fmt``."""
    from kdstream.data.conversations import row_format

    return rows is not None and fmt != "text" and (fmt == "chat" or (bool(rows) and row_format(rows[0]) is not None))


def dataset_examples(dataset: str, text_field: str, split: str, seq_len: int, max_examples: int | None,
                     chat: ChatOptions, tokenizer, refuse_chat: str | None = None) -> tuple[object, dict, dict | None]:
    """(examples, a store's ``corpus`` attribute, its ``conversations`` attribute or None for text).
    ``refuse_chat``: the error to raise, before any rendering, when the dataset holds conversations."""
    from kdstream.data import load_corpus, pack_examples
    from kdstream.data.conversations import conversations_of, fingerprint_conversations, read_rows
    from kdstream.text.chat import chat_examples, template_of

    rows = None if chat.format == "text" else read_rows(dataset, split)
    if chat.format == "chat" and rows is None:
        raise KdError(f"--format chat: {dataset} is not a .jsonl/.json/.parquet file or saved dataset of "
                      "conversations: pass one, or --format text")
    if not is_chat(rows, chat.format):
        if chat.train_on is not None:
            raise KdError(f"--train-on is for chat datasets, and {dataset} is read as plain text: drop it "
                          "(every position of a text example is a target), or pass a chat dataset")
        corpus = load_corpus(dataset, text_field, split)
        examples = pack_examples(corpus.texts, tokenizer, seq_len, max_examples)
        return examples, {**corpus.describe(), "text_field": text_field, "split": split}, None
    if refuse_chat is not None:
        raise KdError(refuse_chat)
    conv = conversations_of(rows, dataset)
    template = template_of(tokenizer, chat.chat_template)
    examples = chat_examples(conv, tokenizer, template, seq_len, chat, max_examples)
    c = examples.counts
    skipped = c["skipped_no_assistant"] + c["skipped_empty"]
    if skipped or c["truncated"] or c["dropped"]:
        print(f"note: {c['conversations']} conversations kept; skipped {c['skipped_no_assistant']} without an "
              f"assistant turn and {c['skipped_empty']} with empty content; {c['truncated']} truncated and "
              f"{c['dropped']} dropped at --seq-len {seq_len} (--on-long {chat.on_long})", file=sys.stderr)
    corpus = {"source": dataset, "fingerprint": fingerprint_conversations(conv.items), "documents": len(rows),
              "format": conv.format, "split": split}
    conversations = {"train_on": chat.train_on or "assistant", "on_long": chat.on_long,
                     "template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(), **c}
    return examples, corpus, conversations
