"""Chat dataset formats → messages; bad rows are one-line errors or counted skips."""
from __future__ import annotations

import json

import pytest

from kdstream.data.conversations import conversations_of, read_rows
from kdstream.errors import KdError

HELLO = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize("row", [
    {"messages": HELLO},
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    {"instruction": "hi", "output": "hello"},
    {"prompt": "hi", "completion": "hello"},
    {"prompt": [HELLO[0]], "completion": [HELLO[1]]},
])
def test_every_format_gives_the_same_messages(row):
    assert conversations_of([row], "t").items == [HELLO]


def test_alpaca_input_joins_the_instruction():
    conv = conversations_of([{"instruction": "Sum", "input": "2 2", "output": "4"}], "t")
    assert conv.items[0][0]["content"] == "Sum\n\n2 2" and conv.format == "alpaca"


def test_rows_without_an_assistant_turn_or_with_empty_content_are_skipped_and_counted():
    rows = [{"messages": HELLO}, {"messages": HELLO[:1]}, {"messages": [HELLO[0], {"role": "assistant", "content": " "}]}]
    conv = conversations_of(rows, "t")
    assert conv.rows == [0] and conv.skipped_no_assistant == 1 and conv.skipped_empty == 1


@pytest.mark.parametrize("rows, message", [
    ([{"messages": HELLO}, {"instruction": "a", "output": "b"}], "mixes formats: row 0 is messages, row 1 is alpaca"),
    ([{"messages": [{"role": "robot", "content": "x"}]}], "row 0: unknown role 'robot'"),
    ([{"messages": [{"role": "user", "content": 5}]}], "row 0: the content of a user message is int"),
    ([{"conversations": [{"from": "alien", "value": "x"}]}], "row 0: unknown speaker 'alien'"),
    ([{"text": "plain"}], "row 0 is not a conversation"),
    ([{"messages": HELLO[:1]}], "no conversation with an assistant turn"),
])
def test_bad_rows_are_one_line_errors(rows, message):
    with pytest.raises(KdError, match=message):
        conversations_of(rows, "t")


def test_jsonl_rows_are_read_as_written(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": HELLO}) + "\n\n" + json.dumps({"messages": HELLO}) + "\n")
    assert read_rows(str(path)) == [{"messages": HELLO}] * 2
    path.write_text("{not json\n")
    with pytest.raises(KdError, match="line 1 is not JSON"):
        read_rows(str(path))
