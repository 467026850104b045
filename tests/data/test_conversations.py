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


@pytest.mark.parametrize("row, want", [
    ({"prompt": "Hi?"}, [{"role": "user", "content": "Hi?"}]),
    ({"prompt": "Hi?", "completion": "Hello."}, [{"role": "user", "content": "Hi?"}]),
    ({"instruction": "Add", "input": "2 and 2"}, [{"role": "user", "content": "Add\n\n2 and 2"}]),
    ({"instruction": "Add", "output": "4"}, [{"role": "user", "content": "Add"}]),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "c"}]},
     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     [{"role": "user", "content": "a"}]),
])
def test_prompts_drop_the_last_assistant_turn_only(row, want):
    from kdstream.data.conversations import prompts_of

    assert prompts_of([row], "t").items == [want]


def test_prompts_skip_empty_rows_and_refuse_a_mix_or_none():
    from kdstream.data.conversations import prompts_of

    got = prompts_of([{"prompt": "a"}, {"prompt": " "}], "t")
    assert got.items == [[{"role": "user", "content": "a"}]] and got.skipped_empty == 1 and got.rows == [0]
    with pytest.raises(KdError, match="mixes formats"):
        prompts_of([{"prompt": "a"}, {"messages": []}], "t")
    with pytest.raises(KdError, match="has no prompts"):
        prompts_of([{"messages": [{"role": "assistant", "content": "only"}]}], "t")
