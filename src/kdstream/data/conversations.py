"""Conversations from the common chat dataset formats, as lists of ``{"role", "content"}`` messages.

Recognized per row, by its keys (one format per dataset: a mix is refused):
    messages       [{"role", "content", ...}]              (OpenAI / TRL; tool calls kept as given)
    conversations  [{"from": human|gpt|system|tool, "value"}] (ShareGPT)
    alpaca         instruction [+ input] + output
    prompt_completion  prompt + completion (strings, or lists of messages as in TRL)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kdstream.errors import KdError

ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "tool": "tool", "function": "tool", "observation": "tool"}
FORMATS = ("messages", "conversations", "alpaca", "prompt_completion")


def row_format(row: dict) -> str | None:
    """The chat format a row is in, by its keys; None for a row that is not a conversation."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "conversations"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    return None


@dataclass
class Conversations:
    """The conversations of a dataset, in order, and what was left out (row numbers are 0-based)."""

    items: list[list[dict]]
    format: str
    rows: list[int] = field(default_factory=list)  # source row of each conversation
    skipped_no_assistant: int = 0
    skipped_empty: int = 0


def _text(value, row: int, what: str) -> str:
    if not isinstance(value, str):
        raise KdError(f"dataset row {row}: {what} is {type(value).__name__}, not text: fix the row or drop it")
    return value


def _messages(value, row: int) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise KdError(f"dataset row {row}: messages must be a list of {{role, content}} objects: fix the row")
    out = []
    for m in value:
        role = m.get("role")
        if role not in ROLES:
            raise KdError(f"dataset row {row}: unknown role {str(role)[:40]!r} (known: {', '.join(ROLES)}): "
                          "rename it or drop the message")
        content = m.get("content")
        if content is None and role == "assistant" and m.get("tool_calls"):
            content = ""  # a tool call's turn: the template renders the call
        out.append({**m, "content": _text(content, row, f"the content of a {role} message")})
    return out


def to_messages(row: dict, fmt: str, index: int) -> list[dict]:
    """One row of format ``fmt`` → its messages. KdError (one line, naming the row) when malformed."""
    if fmt == "messages":
        return _messages(row["messages"], index)
    if fmt == "conversations":
        turns = row["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise KdError(f"dataset row {index}: conversations must be a list of {{from, value}} objects: fix the row")
        out = []
        for t in turns:
            role = _SHAREGPT_ROLES.get(t.get("from"))
            if role is None:
                raise KdError(f"dataset row {index}: unknown speaker {str(t.get('from'))[:40]!r} (known: "
                              f"{', '.join(_SHAREGPT_ROLES)}): rename it or drop the turn")
            out.append({"role": role, "content": _text(t.get("value"), index, f"a {t.get('from')} turn's value")})
        return out
    if fmt == "alpaca":
        prompt = _text(row["instruction"], index, "instruction")
        extra = row.get("input")
        if extra:
            prompt += "\n\n" + _text(extra, index, "input")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(row["output"], index, "output")}]
    prompt, completion = row["prompt"], row["completion"]
    head = _messages(prompt, index) if isinstance(prompt, list) else [{"role": "user", "content": _text(prompt, index, "prompt")}]
    tail = (_messages(completion, index) if isinstance(completion, list)
            else [{"role": "assistant", "content": _text(completion, index, "completion")}])
    return head + tail


def _one_format(rows: list[dict], source: str, format_of, what: str, not_one: str, fix: str) -> str:
    """The format of row 0 (``format_of``), which every row must share: else a one-line KdError
    naming the first row that differs (or that the dataset is empty, or row 0 is none)."""
    if not rows:
        raise KdError(f"dataset {source} has no rows: add {what}s to it")
    fmt = format_of(rows[0])
    if fmt is None:
        raise KdError(f"dataset {source}: row 0 {not_one} (keys: {', '.join(map(str, rows[0]))[:120]}): {fix}")
    for i, row in enumerate(rows):
        other = format_of(row)
        if other != fmt:
            raise KdError(f"dataset {source} mixes formats: row 0 is {fmt}, row {i} is {other or 'not a ' + what}: "
                          "convert it to one format")
    return fmt


def conversations_of(rows: list[dict], source: str) -> Conversations:
    """Every row's messages; rows without an assistant turn or with empty content are skipped and
    counted (the caller warns), a row of another format or a malformed row is a one-line KdError."""
    fmt = _one_format(rows, source, row_format, "conversation", "is not a conversation",
                      "use messages, conversations (ShareGPT), instruction+output or prompt+completion, or --format text")
    out = Conversations([], fmt)
    for i, row in enumerate(rows):
        messages = to_messages(row, fmt, i)
        if not any(m["role"] == "assistant" for m in messages):
            out.skipped_no_assistant += 1
            continue
        if _has_empty_turn(messages):
            out.skipped_empty += 1
            continue
        out.items.append(messages)
        out.rows.append(i)
    if not out.items:
        raise KdError(f"dataset {source} has no conversation with an assistant turn and non-empty content: "
                      "check the file")
    return out


def _has_empty_turn(messages: list[dict]) -> bool:
    """Whether a turn has no content (a tool-call turn's content may be empty)."""
    return any(not m["content"].strip() and not m.get("tool_calls") for m in messages)


def read_rows(dataset: str, split: str = "train") -> list[dict] | None:
    """The rows of a .jsonl / .json / .parquet file or a saved dataset directory as dicts; None
    for what is not one (an embedded corpus, a .txt file, a hub name: text datasets)."""
    path = Path(dataset)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        rows = []
        try:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError:
                            raise KdError(f"dataset {path}: line {n + 1} is not JSON: fix or remove it") from None
        except UnicodeDecodeError:
            return None  # the text loader names the first bad byte
        return rows
    if path.is_file() and path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # the text loader names the problem
        return data if isinstance(data, list) else None
    if path.is_file() and path.suffix.lower() == ".parquet":
        from kdstream.data.corpus import load_file_dataset

        return load_file_dataset(path, "parquet").to_list()
    if path.is_dir():
        from kdstream.data.corpus import load_saved_dataset

        return load_saved_dataset(path, split).to_list()
    return None


def fingerprint_conversations(items: list[list[dict]]) -> str:
    """sha256 over the conversations' canonical JSON, in order (corpus.fingerprint_texts of it)."""
    from kdstream.data.corpus import fingerprint_texts

    return fingerprint_texts([json.dumps(messages, sort_keys=True, ensure_ascii=False) for messages in items])


def prompt_format(row: dict) -> str | None:
    """A prompt row's format: a chat format (its last assistant turn, if any, is written anew), or
    ``prompt`` (a plain ``prompt`` field, text or messages); None for a row that holds no prompt."""
    fmt = row_format(row)
    if fmt is not None:
        return fmt
    if isinstance(row, dict) and "instruction" in row:
        return "alpaca"
    if isinstance(row, dict) and "prompt" in row:
        return "prompt"
    return None


def prompts_of(rows: list[dict], source: str) -> Conversations:
    """Every row's prompt as messages ending in a turn the assistant answers: a chat row without
    its last assistant turn, or a ``prompt`` field as a user turn. Rows left empty are skipped and
    counted (``skipped_empty``); a dataset with none is a one-line KdError."""
    fmt = _one_format(rows, source, prompt_format, "prompt", "holds no prompt",
                      "use a prompt field, messages, conversations (ShareGPT) or instruction (Alpaca)")
    out = Conversations([], fmt)
    for i, row in enumerate(rows):
        if fmt == "prompt":
            prompt = row["prompt"]
            messages = (_messages(prompt, i) if isinstance(prompt, list)
                        else [{"role": "user", "content": _text(prompt, i, "prompt")}])
        elif fmt == "alpaca":
            messages = to_messages({"output": "", **row}, fmt, i)
        else:
            messages = to_messages(row, fmt, i)
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # the teacher writes it anew
        if not messages or _has_empty_turn(messages):
            out.skipped_empty += 1
            continue
        out.items.append(messages)
        out.rows.append(i)
    if not out.items:
        raise KdError(f"dataset {source} has no prompts (every row is empty once its last assistant turn is "
                      "dropped): check the file")
    return out
