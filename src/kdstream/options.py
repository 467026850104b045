"""Shared helpers for the typed option dataclasses of each command.

Every command's options are a frozen dataclass validated in ``__post_init__``; the resolved
options are written as ``options.yaml`` beside every output so a run can be repeated exactly.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import yaml

from kdstream.errors import KdError, shown


def option(default: Any = dataclasses.MISSING, help: str = "", **cli: Any) -> Any:
    """A field of an options dataclass carrying its ``--help`` text: the command's flag is
    generated from it (kdstream.cli.options), so default and help live here only. ``cli``: the
    generator's other metadata keys (parse, metavar, required)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


# Flags of every command that reads a corpus (precompute-logits, distill, extract-eval): one
# default and help for each, wherever it appears.
_CORPUS_FLAGS = {
    "text_field": ("text", "Column (or JSON key) of the dataset that holds the text."),
    "split": ("train", "Dataset split to read."),
}


def corpus_option(name: str) -> Any:
    """The field of a corpus flag shared by several commands (``text_field``, ``split``)."""
    default, help_text = _CORPUS_FLAGS[name]
    return option(default, help_text)


DEVICES = ("auto", "cpu", "cuda")  # --device of every command that runs a model with torch


def device_option(what: str) -> Any:
    """The ``--device`` field of a command: ``what`` runs there (checked by ``check_device``)."""
    return option("auto", f"Where {what}: auto (CUDA when available) | cpu | cuda.")


def check_device(device: str) -> None:
    """KdError unless ``device`` is one of DEVICES."""
    require(device in DEVICES, f"--device {device!r} is unknown: use {' | '.join(DEVICES)}")


def check_shard(num_workers: int, worker_index: int) -> None:
    """KdError unless ``worker_index`` names one of ``num_workers`` shares (--num-workers, --worker-index)."""
    require(num_workers >= 1, f"--num-workers {num_workers} must be at least 1 (1: a single run)")
    require(0 <= worker_index < num_workers, f"--worker-index {worker_index} is outside 0..{num_workers - 1}: "
                                             "use 0 <= --worker-index < --num-workers")


def options_dict(options: Any) -> dict[str, Any]:
    """A plain dict of a dataclass's fields (paths as strings), ready for YAML or Zarr attrs."""
    out = {}
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if dataclasses.is_dataclass(value):
            value = options_dict(value)
        out[field.name] = str(value) if isinstance(value, Path) else value
    return out


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def command_argv(command: str, options: Any, extra: tuple[str, ...] = ()) -> list[str]:
    """``[command, flags…]`` that the command's generated CLI builds ``options`` from: each field
    without a default, and each whose value is not its default (nested option dataclasses such as
    ``engine`` flattened, as the CLI flattens them), then ``extra`` as given (a flag given twice:
    the last value wins). A ``parse`` field is written as its text (a tuple comma-joined)."""
    out = [command]
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if dataclasses.is_dataclass(value):
            out += command_argv(command, value)[1:]
            continue
        default = _default(field)
        if value == default and default is not dataclasses.MISSING:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):  # a plain flag, or the --no- side of a pair
            out.append(flag if value else "--no-" + flag[2:])
        elif "parse" in field.metadata:
            out += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
        elif isinstance(value, tuple):  # a repeatable option
            out += [a for item in value for a in (flag, str(item))]
        elif value is not None:
            out += [flag, str(value)]
    return [*out, *extra]


OPTIONS_FILE = "options.yaml"  # the resolved options, saved beside every output


def save_options(options: Any, directory: str | os.PathLike) -> Path:
    path = Path(directory) / OPTIONS_FILE
    path.write_text(yaml.safe_dump(options_dict(options), sort_keys=False))
    return path


class _AliasFound(Exception):
    pass


class _UserYaml(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``5e-5`` is a number, not text) that refuses aliases: a few
    hundred bytes of nested aliases expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasFound(event.anchor, event.start_mark.line + 1)
        return super().compose_node(parent, index)


_UserYaml.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?"  # 1.5, 1., 1.5e-3
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+"  # 5e-5 (text in YAML 1.1)
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"),  # .5
    list("-+0123456789."))


def read_user_yaml(text: str, where: str) -> Any:
    """A YAML document a user handed over (``where`` names it in errors): aliases refused, syntax
    errors one line."""
    try:
        return yaml.load(text, Loader=_UserYaml)
    except _AliasFound as alias:
        anchor, line = alias.args
        raise KdError(f"{where} uses the YAML alias *{anchor[:40]} (line {line}): write the value out; "
                      "aliases are refused (a few nested ones expand to gigabytes)") from None
    except yaml.YAMLError as exc:
        raise KdError(f"{where} is not valid YAML ({exc.__class__.__name__}): fix its syntax") from None


def load_yaml_options(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``--config`` file: a flat mapping of option names (dashes or underscores)."""
    p = Path(path)
    if not p.is_file():
        raise KdError(f"config file {p} not found: pass an existing YAML file to --config")
    data = read_user_yaml(p.read_text(), f"config file {p}") or {}
    if not isinstance(data, dict):
        raise KdError(f"config file {p} must be a mapping of option: value, not a {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


# What a config value of each type must be in YAML: no coercion (true is not 1, 8.7 is not 8).
_TYPE_CHECKS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string (quote it)"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "None": (lambda v: v is None, "null"),
}


def check_value(key: str, value: Any, kind: str, where: str) -> None:
    """KdError unless ``value`` read from YAML has the type ``kind`` ("int", "float | None", ...)."""
    allowed = [t.strip() for t in kind.split("|")]
    if not any(_TYPE_CHECKS[t][0](value) for t in allowed):
        expected = " or ".join(_TYPE_CHECKS[t][1] for t in allowed)
        raise KdError(f"{where}: {key} is {shown(value)}, not {expected}: fix its value")


def require(condition: bool, message: str) -> None:
    """Raise a user-facing error unless ``condition`` holds (used by ``__post_init__``)."""
    if not condition:
        raise KdError(message)
