"""Pieces every command shares: ``--config`` YAML loading and the JSON summary line."""
from __future__ import annotations

import json

import click

from kdstream.errors import KdError


def load_config(ctx: click.Context, _param, path):
    if path:
        from kdstream.options import load_yaml_options

        values = load_yaml_options(path)
        known = {p.name for p in ctx.command.params}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KdError(f"config {path} has unknown options {', '.join(unknown)}: see `{ctx.command.name} --help`")
        ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


config_option = click.option(
    "--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False, callback=load_config,
    help="YAML file of options (names as keys); command-line flags override it.",
)


def print_summary(summary: dict) -> None:
    click.echo(json.dumps(summary))
