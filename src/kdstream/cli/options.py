"""Click options generated from an option dataclass: the field is the one source of a flag's
default, type and help, so the CLI and the library cannot disagree.

A field ``top_k: int = 64`` becomes ``--top-k`` (INT, default 64); its help is
``field(metadata={"help": ...})``. A bool defaulting to False is a plain flag (``--overwrite``),
any other bool a pair (``--verify-store/--no-verify-store``); ``X | None`` is an option of type X
that may be left out; ``tuple[str, ...]`` is a repeatable option. A field holding another option
dataclass (``engine: EngineOptions``) is flattened: its fields become flags of the command.

Metadata keys beyond ``help``, for a flag that needs something special:
    parse     text -> value: the flag is read as text and parsed when the options are built
              (``--loss-chunk auto|N``, ``--prefix-len 32,48``); its default is shown as text
    metavar   the value's name in --help
    required  False for a field without a default that a command may omit (checked in __post_init__)
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import click

_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


class ParsedText(click.types.StringParamType):
    """The text a field's ``parse`` reads (``auto``, ``512``, ``32,48``): in a --config YAML it may
    also be written as a number or a list."""


@dataclasses.dataclass(frozen=True)
class OptionField:
    """One flag of a command: a field of the options dataclass or of one nested in it."""

    field: dataclasses.Field
    type: Any  # the resolved annotation
    nested: str | None  # the outer field holding this one's dataclass (``engine``); None at top level

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default(self) -> Any:
        """The dataclass default (``dataclasses.MISSING`` for a field without one)."""
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return self.field.default


def option_fields(cls: type) -> list[OptionField]:
    """Every flag-bearing field of ``cls``, nested option dataclasses flattened, in field order."""
    out: list[OptionField] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            inner = typing.get_type_hints(kind)
            out += [OptionField(g, inner[g.name], f.name) for g in dataclasses.fields(kind)]
        else:
            out.append(OptionField(f, kind, None))
    names = [o.name for o in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TypeError(f"{cls.__name__}: nested options repeat the field names {dup}: one flag each")
    return out


def _without_none(kind: Any) -> Any:
    """``int | None`` -> int; anything else unchanged."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind


def cli_default(opt: OptionField) -> Any:
    """The default a generated option shows and passes (text for a ``parse`` field)."""
    value = opt.default
    if value is dataclasses.MISSING:
        return None
    if "parse" in opt.field.metadata and value is not None:
        return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return value


def click_option(opt: OptionField, *, as_override: bool = False) -> click.Option:
    """The click option of one field. ``as_override``: default None (the field's default then comes
    from elsewhere, e.g. a study YAML) and the dataclass default named in the help."""
    meta = opt.field.metadata
    help_text = meta.get("help", "")
    kind = _without_none(opt.type)
    default = cli_default(opt)
    kwargs: dict[str, Any] = {"help": help_text, "metavar": meta.get("metavar")}
    decls = [opt.flag]
    if kind is bool and default is False and not as_override:
        return click.Option(decls, is_flag=True, default=False, help=help_text)
    if kind is bool:
        decls = [f"{opt.flag}/--no-{opt.flag[2:]}"]
        kwargs.update(default=None if as_override else default, show_default=default is not None and not as_override)
    elif "parse" in meta:
        kwargs.update(type=ParsedText(), default=default, show_default=default is not None)
    elif typing.get_origin(kind) is tuple and typing.get_args(kind)[1:] == (Ellipsis,):
        kwargs.update(type=_CLICK_TYPES[typing.get_args(kind)[0]], multiple=True, default=default or ())
    elif kind in _CLICK_TYPES:
        kwargs.update(type=_CLICK_TYPES[kind], default=default, show_default=default is not None)
        if opt.default is dataclasses.MISSING and meta.get("required", True):
            # no default at all: click 8.3 takes an explicit default=None as a value given
            del kwargs["default"]
            kwargs["required"] = True
    else:
        raise TypeError(f"field {opt.name}: type {opt.type} has no click mapping: give it a 'parse' in its metadata")
    if as_override:
        kwargs.update(default=None, show_default=False, required=False, multiple=False)
        if opt.default is not dataclasses.MISSING:
            kwargs["help"] = f"{help_text}  [default: {default}]".lstrip()
    return click.Option(decls, **kwargs)


def options_from(cls: type, *, only: tuple[str, ...] | None = None, as_override: bool = False) -> Callable:
    """Decorator adding one click option per field of ``cls`` (or per field named in ``only``),
    in field order, shown after the decorators above it and before those below it."""
    fields = [o for o in option_fields(cls) if only is None or o.name in only]
    missing = sorted(set(only or ()) - {o.name for o in fields})
    if missing:
        raise TypeError(f"{cls.__name__} has no fields {missing}")

    def decorate(command: Callable) -> Callable:
        params = getattr(command, "__click_params__", [])
        # click collects decorator options innermost first and reverses them when it builds the
        # command: append these reversed, as that many stacked @click.option would
        command.__click_params__ = [*params, *reversed([click_option(o, as_override=as_override) for o in fields])]
        return command

    return decorate


def build(cls: type, values: dict[str, Any]) -> Any:
    """``cls`` from the flat keyword arguments click passed: ``parse`` fields parsed, nested option
    dataclasses rebuilt from their flags."""
    values = dict(values)
    nested: dict[str, dict[str, Any]] = {}
    for opt in option_fields(cls):
        if opt.name not in values:
            continue
        value = values.pop(opt.name)
        parse = opt.field.metadata.get("parse")
        if parse is not None and value is not None:
            value = parse(value)
        if opt.nested is None:
            values[opt.name] = value
        else:
            nested.setdefault(opt.nested, {})[opt.name] = value
    hints = typing.get_type_hints(cls)
    for outer, inner in nested.items():
        values[outer] = hints[outer](**inner)
    return cls(**values)
