"""Hostile or careless --config files: a value of the wrong type is one line naming the key and the
type (never coerced: true is not 1, 8.7 is not 8); nested YAML aliases (a few hundred bytes that
expand to gigabytes) are refused at once; an error line stays short whatever it echoes."""
from __future__ import annotations

import time

import pytest

from helpers import run_cli

# (command, its other arguments, config text, the message's distinctive part)
WRONG_TYPES = {
    "bool for int": ("precompute-logits", "top_k: true", "top_k is true, not an integer"),
    "float for int": ("precompute-logits", "top_k: 8.7", "top_k is 8.7, not an integer"),
    "null for int": ("precompute-logits", "top_k: null", "top_k is null, not an integer"),
    "text for int": ("distill", "epochs: '3'", 'epochs is "3", not an integer'),
    "text for float": ("distill", "lr: fast", 'lr is "fast", not a number'),
    "int for flag": ("distill", "overwrite: 1", "overwrite is 1, not true or false"),
    "number for text": ("distill", "loss: 5", "loss is 5, not a string (quote it)"),
    "bool for a parsed field": ("distill", "loss_chunk: true", "loss_chunk is true, not a string (quote it) or an "
                                                               "integer or a list"),
    "study: bool for int": ("reproduce", "seeds: true", "seeds is true, not an integer"),
    "study: float in a list of int": ("reproduce", "canary_counts: [1, 2.5]", "canary_counts item is 2.5, not an "
                                                                             "integer"),
}


@pytest.mark.parametrize("case", list(WRONG_TYPES))
def test_a_config_value_of_the_wrong_type_is_one_line(case, tmp_path, error_line):
    command, text, message = WRONG_TYPES[case]
    config = tmp_path / "c.yaml"
    config.write_text(text + "\n")
    args = {"reproduce": []}.get(command, ["--model", tmp_path / "m", "--dataset", tmp_path / "d.jsonl"])
    line = error_line(run_cli(command, "--config", config, *args, "--out", tmp_path / "out", check=False, timeout=60))
    assert line == f"error: config {config}: {message}: fix its value", line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_config_numbers_are_read_as_yaml_1_2_numbers(tmp_path):
    """``lr: 5e-5`` is the number 5e-5 (YAML 1.1 would make it text), and an int is a valid float."""
    from kdstream.cli.distill import distill

    config = tmp_path / "c.yaml"
    config.write_text("lr: 5e-5\nmax_grad_norm: 2\nepochs: 3\nprefetch: 1\n")
    ctx = distill.make_context("distill", ["--config", str(config), "--model", "m", "--out", "o"])
    assert (ctx.params["lr"], ctx.params["max_grad_norm"], ctx.params["epochs"]) == (5e-5, 2.0, 3)


def _laughs(key: str, levels: int = 9) -> str:
    """A few hundred bytes of YAML whose ``key`` expands to 9**levels strings."""
    nodes = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    nodes += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"{key}: [{', '.join(nodes)}]\n"


@pytest.mark.parametrize("command,key,flag", [("precompute-logits", "dataset", "--config"),
                                              ("distill", "model", "--config"),
                                              ("reproduce", "teacher_model", "--config"),
                                              ("reproduce", "examples", "--grid")])
def test_nested_yaml_aliases_are_refused_at_once(command, key, flag, tmp_path, error_line):
    config = tmp_path / "c.yaml"
    config.write_text(_laughs(key))
    assert config.stat().st_size < 500
    args = {"precompute-logits": ["--model", tmp_path / "m"], "distill": [], "reproduce": []}[command]
    if flag == "--grid":
        args = ["--calibrate"]
    started = time.monotonic()
    line = error_line(run_cli(command, flag, config, *args, "--out", tmp_path / "out", check=False, timeout=30))
    assert time.monotonic() - started < 10
    where = "grid" if flag == "--grid" else "config file"
    assert line == (f"error: {where} {config} uses the YAML alias *a0 (line 1): write the value out; aliases are "
                    "refused (a few nested ones expand to gigabytes)"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


@pytest.mark.parametrize("text", ["top_k: '" + "9" * 5_000_000 + "'\n", "? " + "x" * 5_000_000 + "\n: 1\n",
                                  "".join(f"k{i}: 1\n" for i in range(100_000))])
def test_an_error_line_stays_short_whatever_it_echoes(text, tmp_path, error_line):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    line = error_line(run_cli("precompute-logits", "--config", config, "--model", tmp_path / "m", "--out",
                              tmp_path / "out", check=False, timeout=60))
    assert len(line) < 1100 and (line.endswith("--help`") or line.endswith("fix its value")), line[:2000]


def test_an_overlong_message_keeps_its_start_and_its_fix():
    from kdstream.cli.errors import MAX_LINE, short_line

    line = short_line("problem " + "x" * 10 * MAX_LINE + " : the fix")
    assert len(line) <= MAX_LINE + 3 and line.startswith("problem x") and line.endswith(": the fix")
