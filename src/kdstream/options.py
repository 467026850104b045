"""Shared helpers for the typed option dataclasses of each command.

Every command's options are a frozen dataclass validated in ``__post_init__``; the resolved
options are written as ``options.yaml`` beside every output so a run can be repeated exactly.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from kdstream.errors import KdError


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


def options_dict(options: Any) -> dict[str, Any]:
    """A plain dict of a dataclass's fields (paths as strings), ready for YAML or Zarr attrs."""
    out = {}
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if dataclasses.is_dataclass(value):
            value = options_dict(value)
        out[field.name] = str(value) if isinstance(value, Path) else value
    return out


OPTIONS_FILE = "options.yaml"  # the resolved options, saved beside every output


def save_options(options: Any, directory: str | os.PathLike) -> Path:
    path = Path(directory) / OPTIONS_FILE
    path.write_text(yaml.safe_dump(options_dict(options), sort_keys=False))
    return path


def load_yaml_options(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``--config`` file: a flat mapping of option names (dashes or underscores)."""
    p = Path(path)
    if not p.is_file():
        raise KdError(f"config file {p} not found: pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise KdError(f"config file {p} is not valid YAML ({exc.__class__.__name__}): fix its syntax") from None
    if not isinstance(data, dict):
        raise KdError(f"config file {p} must be a mapping of option: value, not a {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def require(condition: bool, message: str) -> None:
    """Raise a user-facing error unless ``condition`` holds (used by ``__post_init__``)."""
    if not condition:
        raise KdError(message)
