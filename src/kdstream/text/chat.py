"""Conversations rendered with a chat template into token ids, with the positions the loss is on.

The mask is derived from character offsets of the rendered text, exactly:
- turn i's text is what rendering messages[:i+1] adds to rendering messages[:i] (templates must
  be prefix-consistent: each rendering starts with the previous one; otherwise a one-line error);
- an assistant turn's header ends where its content starts, found by rendering the turn with a
  sentinel as its content; its targets run from there to the end of the last special token in
  the turn (the closing ``<|im_end|>`` / ``<|eot_id|>``, so the student learns to stop), without
  the whitespace a template puts between turns;
- a token is a target when its first character lies in one of those ranges.
Row t of a store predicts token t+1: row t is a target row when token t+1 is a target token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdstream.errors import KdError
from kdstream.options import option, require

_SENTINEL = "\u2063KDSTREAM-CONTENT\u2063"  # invisible separator around a word no template rewrites

# ChatML (Qwen, SmolLM2-Instruct without their default system prompt): the template of the
# tokenizers kdstream trains itself for conversations (the study's tiny models)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_SPECIALS = ("<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class ChatOptions:
    """How a chat dataset becomes examples (precompute-logits; distill --dataset)."""

    format: str = option("auto", "auto | chat | text: how --dataset rows are read (auto: chat when rows hold "
                                 "messages, conversations, instruction+output or prompt+completion).")
    chat_template: str | None = option(None, "A Jinja chat template file rendering the conversations "
                                             "(default: the model's tokenizer's own).")
    train_on: str | None = option(None, "Chat data: assistant (default: targets only where the next token "
                                        "is an assistant turn's content or closing token) | all (every position).")
    on_long: str = option("truncate", "Chat data: a conversation longer than --seq-len is truncate(d, counted) "
                                      "| drop(ped, counted).")

    def __post_init__(self) -> None:
        require(self.format in ("auto", "chat", "text"), f"--format {self.format!r} is not one of auto, chat, text")
        require(self.train_on in (None, "assistant", "all"), f"--train-on {self.train_on!r} is not one of assistant, all")
        require(self.on_long in ("truncate", "drop"), f"--on-long {self.on_long!r} is not one of truncate, drop")


def template_of(tokenizer, path: str | None) -> str:
    """The template text: ``path``'s, else the tokenizer's; KdError naming the flag when neither."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise KdError(f"--chat-template {p} not found: pass a Jinja template file")
        return p.read_text(encoding="utf-8")
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise KdError("the model's tokenizer has no chat template: pass one with --chat-template FILE "
                      "(or --format text to read the rows as plain text)")
    return template


def _render(tokenizer, template: str, messages: list[dict], row: int) -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    except Exception as exc:  # jinja raises its own errors (TemplateError, UndefinedError, ...)
        raise KdError(f"dataset row {row}: the chat template failed to render it ({exc.__class__.__name__}: "
                      f"{str(exc)[:120]}): fix the row or pass another --chat-template") from None


def _closing_end(text: str, start: int, stop: int, specials: list[str]) -> int:
    """End of the last special token in text[start:stop]; stop (without trailing whitespace) if none."""
    ends = [at + len(s) for s in specials if (at := text.rfind(s, start, stop)) >= 0]
    if ends:
        return max(ends)
    return max(start, len(text[:stop].rstrip()))  # a template without special tokens: up to the text's end


def target_ranges(tokenizer, template: str, messages: list[dict], row: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, the [start, end) character ranges of its assistant targets)."""
    specials = sorted({t for t in tokenizer.get_added_vocab()}, key=len, reverse=True)
    full = _render(tokenizer, template, messages, row)
    ranges = []
    before = ""
    for i, m in enumerate(messages):
        upto = _render(tokenizer, template, messages[: i + 1], row) if i + 1 < len(messages) else full
        if not full.startswith(upto) or not upto.startswith(before):
            raise KdError(f"dataset row {row}: the chat template renders a conversation's first turns differently "
                          "alone than within it (not prefix-consistent), so turns cannot be located: pass "
                          "another --chat-template")
        if m["role"] == "assistant":
            probe = _render(tokenizer, template, [*messages[:i], {**m, "content": _SENTINEL}], row)
            at = probe.find(_SENTINEL, len(before))
            if at < 0 or not probe.startswith(before):
                raise KdError(f"dataset row {row}: the chat template does not render an assistant turn's content "
                              "as given, so its tokens cannot be located: pass another --chat-template")
            ranges.append((at, _closing_end(full, at, len(upto), specials)))
        before = upto
    return full, ranges


def token_mask(offsets: list[tuple[int, int]], ranges: list[tuple[int, int]]) -> np.ndarray:
    """(n,) bool: token j's first character lies in one of ``ranges``."""
    starts = np.array([a for a, _ in offsets], dtype=np.int64)
    mask = np.zeros(len(offsets), dtype=bool)
    for lo, hi in ranges:
        mask |= (starts >= lo) & (starts < hi)
    return mask


@dataclass
class ChatExamples:
    """One example per conversation, padded to ``seq_len`` with zeros after ``length`` tokens.

    ``target_mask`` (S, L-1): row t is a target (its next token, t+1, is one the loss is on)."""

    input_ids: np.ndarray  # (S, L) int64
    length: np.ndarray  # (S,) int64 real tokens
    target_mask: np.ndarray  # (S, L-1) bool
    example_id: np.ndarray  # (S,) int64: index among the conversations kept (stable under --max-examples)
    doc_index: np.ndarray  # (S,) int64: the dataset row
    counts: dict = field(default_factory=dict)  # truncated, dropped, skipped_*, target_positions

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def conversations(self) -> bool:  # read by distill as a conversation store's flag: loss at the targets only
        return True

    def read(self, start: int, stop: int, keys: tuple[str, ...] = ("input_ids", "example_id")) -> dict[str, np.ndarray]:
        """Rows [start, stop) of the named fields, as a conversation store gives them (``topk_len``
        1 at a target row, 0 elsewhere: what CE needs of it)."""
        fields = {"input_ids": self.input_ids, "example_id": self.example_id, "doc_index": self.doc_index,
                  "topk_len": self.target_mask.view(np.uint8)}
        missing = [k for k in keys if k not in fields]
        if missing:
            raise KeyError(f"conversations without a store have no {', '.join(missing)} (those come from a logit store)")
        return {k: fields[k][start:stop] for k in keys}


def chat_examples(conversations, tokenizer, template: str, seq_len: int, opts: ChatOptions,
                  max_examples: int | None = None) -> ChatExamples:
    """Render, tokenize and mask each conversation (``data.conversations.Conversations``)."""
    if seq_len < 2:
        raise KdError(f"--seq-len {seq_len} is too short: an example needs at least 2 tokens")
    ids, lengths, masks, rows = [], [], [], []
    truncated = dropped = 0
    for messages, row in zip(conversations.items, conversations.rows):
        if max_examples is not None and len(ids) >= max_examples:
            break
        text, ranges = target_ranges(tokenizer, template, messages, row)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        tokens = np.asarray(enc["input_ids"], dtype=np.int64)
        mask = token_mask(enc["offset_mapping"], ranges) if opts.train_on != "all" else np.ones(len(tokens), bool)
        if len(tokens) > seq_len:
            if opts.on_long == "drop":
                dropped += 1
                continue
            truncated += 1
            tokens, mask = tokens[:seq_len], mask[:seq_len]
        if len(tokens) < 2 or not mask[1:].any():
            dropped += 1  # nothing left to learn from (an assistant turn cut off entirely)
            continue
        padded = np.zeros(seq_len, dtype=np.int64)
        padded[: len(tokens)] = tokens
        rowmask = np.zeros(seq_len - 1, dtype=bool)
        rowmask[: len(tokens) - 1] = mask[1:]
        ids.append(padded), lengths.append(len(tokens)), masks.append(rowmask), rows.append(row)
    if not ids:
        raise KdError(f"no conversation fits --seq-len {seq_len} with a target left: raise --seq-len, "
                      "or use --on-long truncate")
    target_mask = np.stack(masks)
    counts = {"conversations": len(ids), "truncated": truncated, "dropped": dropped,
              "skipped_no_assistant": conversations.skipped_no_assistant,
              "skipped_empty": conversations.skipped_empty, "target_positions": int(target_mask.sum()),
              "tokens": int(sum(lengths))}
    return ChatExamples(np.stack(ids), np.asarray(lengths, dtype=np.int64), target_mask,
                        np.arange(len(ids), dtype=np.int64), np.asarray(rows, dtype=np.int64), counts)


def prompt_tokens(tokenizer, template: str, messages: list[dict], row: int = 0) -> np.ndarray:
    """(P,) int64: the conversation rendered up to the assistant's turn header (the template's
    generation prompt), as the teacher sees it before writing the reply."""
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
    except Exception as exc:  # jinja's own errors
        raise KdError(f"dataset row {row}: the chat template failed to render it ({exc.__class__.__name__}: "
                      f"{str(exc)[:120]}): fix the row or pass another --chat-template") from None
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


def closing_token(tokenizer, template: str) -> int | None:
    """The special token that closes an assistant turn in ``template`` (``<|im_end|>``,
    ``<|eot_id|>``): the first one rendered after a turn's content; None when there is none."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
    text = _render(tokenizer, template, probe, 0)
    after = text.find(_SENTINEL) + len(_SENTINEL)
    found = [(at, s) for s in tokenizer.get_added_vocab() if (at := text.find(s, after)) >= 0]
    if not found:
        return None
    at, special = min(found, key=lambda f: (f[0], -len(f[1])))
    return int(tokenizer.convert_tokens_to_ids(special))
