"""Extraction prompts from a conversation store: each conversation's prompt and trained answer.

A conversation store (format 7) keeps the teacher's rows only at the assistant targets: row t is a
target when token t+1 is an assistant turn's content or its closing token. A run of consecutive
target rows t0..t1 is one assistant turn, tokens t0+1..t1+1. So, per conversation:

    prefix = input_ids[: t0+1]          the conversation up to the first token of the turn's content
                                        (system, user turns and the assistant header: the prompt
                                        as the model sees it when it answers)
    suffix = input_ids[t0+1 : t0+1+n]   the turn's first n tokens (content, then its closing token)

Only the first assistant turn of each conversation is judged: one verdict per conversation keeps
example_id the key of every table downstream (compare, features, classify, distill --exclude),
and the first answer's prompt holds no earlier answer of the model. A first turn shorter than n
tokens is skipped and counted, never padded or cut.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kdstream.errors import KdError
from kdstream.storage.schema import EXAMPLE_LENGTH, LENGTH_ARRAY

SHORT_TURN = "first_turn_shorter_than_suffix"
NO_TURN = "no_assistant_turn"


@dataclass
class FirstTurns:
    """The judged conversations (c of them) of a store range, and what was skipped."""

    example_id: np.ndarray  # (c,) int64
    row: np.ndarray  # (c,) int64: the store row of each, relative to the range's start
    prompt_len: np.ndarray  # (c,) int64: tokens before the turn's first content token
    prompts: list[np.ndarray] = field(default_factory=list)  # c arrays (prompt_len[i],)
    suffix: np.ndarray | None = None  # (c, n) int64
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.example_id)

    def windows(self, n: int) -> list[np.ndarray]:
        """Prompt + suffix of each conversation, (prompt_len[i] + n,): the fast path's input."""
        return [np.concatenate([p, s]) for p, s in zip(self.prompts, self.suffix)]

    def longest(self, n: int) -> int:
        return int(self.prompt_len.max()) + n if len(self) else n


def check_conversation_store(store, url: str) -> None:
    """KdError unless the store's target rows locate the assistant turns (--train-on assistant, or
    a --generate store: its rows are the teacher's response)."""
    train_on = store.attrs["conversations"].get("train_on", "assistant")
    if train_on not in ("assistant", "generated"):
        raise KdError(f"store {url} holds conversations with teacher rows at every position (--train-on {train_on}), "
                      "so its assistant turns cannot be located: evaluate a store made with --train-on assistant")


def first_turns(rows: dict[str, np.ndarray], n: int) -> FirstTurns:
    """rows: ``store.read`` of input_ids (B, L), example_id (B,), length (B,) and topk_len (B, L-1)."""
    length = rows[EXAMPLE_LENGTH].astype(np.int64)
    target = rows[LENGTH_ARRAY] > 0  # (B, L-1): row t predicts a target token t+1
    target &= np.arange(target.shape[1])[None, :] < (length - 1)[:, None]
    has = target.any(axis=1)
    start = np.argmax(target, axis=1)  # (B,) first target row t0
    # the turn runs while rows stay targets: its first non-target row after t0 ends it
    after = np.where(np.arange(target.shape[1])[None, :] >= start[:, None], ~target, False)
    end = np.where(after.any(axis=1), np.argmax(after, axis=1), length - 1)  # (B,) one past t1
    turn_len = np.where(has, end - start, 0)
    keep = has & (turn_len >= n)
    skipped = {NO_TURN: int((~has).sum()), SHORT_TURN: int((has & ~keep).sum())}
    idx = np.flatnonzero(keep)
    prompt_len = start[idx] + 1
    ids = rows["input_ids"]
    return FirstTurns(
        example_id=np.asarray(rows["example_id"][idx], np.int64),
        row=idx.astype(np.int64),
        prompt_len=prompt_len.astype(np.int64),
        prompts=[np.asarray(ids[i, :p], np.int64) for i, p in zip(idx.tolist(), prompt_len.tolist())],
        suffix=np.stack([ids[i, p : p + n] for i, p in zip(idx.tolist(), prompt_len.tolist())]).astype(np.int64)
        if len(idx) else np.zeros((0, n), np.int64),
        skipped={k: v for k, v in skipped.items() if v},
    )


def store_windows(rows: dict[str, np.ndarray], row: np.ndarray, prompt_len: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The store method's rows, shifted so every judged suffix is tokens 1..n: input_ids (c, n+1)
    and the teacher arrays (c, n, ...) at rows prompt_len-1 .. prompt_len+n-2 (each the row that
    predicts a suffix token), for ``fast_path.store_metrics(windows, 1, n + 1)``. ``row``: each
    judged conversation's index into ``rows``."""
    out = {}
    for key, width in (("input_ids", n + 1), ("topk_ids", n), ("topk_logprobs", n), ("target_rank", n)):
        out[key] = np.stack([rows[key][r, p - 1 : p - 1 + width] for r, p in zip(row.tolist(), prompt_len.tolist())]) \
            if len(row) else np.zeros((0, width) + rows[key].shape[2:], rows[key].dtype)
    return out


def score_each(backend, windows: list[np.ndarray], n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``backend.score_suffix`` over sequences of different lengths, grouped by length (a batch of
    one length needs no padding): argmax ids (c, n) and top1 - top2 gaps (c, n) in input order."""
    argmax = np.zeros((len(windows), n), np.int64)
    gap = np.zeros((len(windows), n), np.float32)
    by_len: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_len.setdefault(len(w), []).append(i)
    for idx in by_len.values():
        for b in range(0, len(idx), batch_size):
            part = idx[b : b + batch_size]
            a, g = backend.score_suffix(np.stack([windows[i] for i in part]), n)
            argmax[part], gap[part] = a, g
    return argmax, gap
