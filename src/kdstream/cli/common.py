"""Pieces every command shares: ``--config`` YAML loading and the JSON summary line."""
from __future__ import annotations

import json

import click

from kdstream.errors import KdError


def load_config(ctx: click.Context, _param, path):
    if path:
        from kdstream.options import check_value, load_yaml_options

        values = load_yaml_options(path)
        params = {p.name: p for p in ctx.command.params}
        unknown = sorted(set(values) - set(params))
        if unknown:
            names = ", ".join(name[:40] for name in unknown[:10]) + (", …" if len(unknown) > 10 else "")
            raise KdError(f"config {path} has unknown options {names}: see `{ctx.command.name} --help`")
        for name, value in values.items():
            param = params[name]
            kind = _yaml_kind(param)
            if kind is None:
                continue
            optional = " | None" if param.default is None and not param.required else ""
            if param.multiple:
                check_value(name, value, "list" + optional, f"config {path}")
                for item in value or ():
                    check_value(f"{name} item", item, kind, f"config {path}")
            else:
                check_value(name, value, kind + optional, f"config {path}")
        ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


def _yaml_kind(param: click.Parameter) -> str | None:
    """The type a --config value of ``param`` must have in YAML (kdstream.options.check_value's
    kinds), so that click's conversion never coerces one (true to 1, 8.7 to 8)."""
    from kdstream.cli.options import ParsedText

    kind = param.type
    if isinstance(kind, ParsedText):
        return "str | int | list"
    for click_type, name in ((click.types.BoolParamType, "bool"), (click.types.IntParamType, "int"),
                             (click.types.FloatParamType, "float"), (click.types.StringParamType, "str"),
                             (click.Choice, "str"), (click.Path, "str")):
        if isinstance(kind, click_type):
            return name
    return None


config_option = click.option(
    "--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False, callback=load_config,
    help="YAML file of options (names as keys); command-line flags override it.",
)


def print_summary(summary: dict) -> None:
    click.echo(json.dumps(summary))
