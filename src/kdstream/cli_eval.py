"""`kdstream eval merge SHARD_DIR... --out DIR`: join extract-eval shards (--num-workers N)."""
from __future__ import annotations

import click

from kdstream.cli_common import print_summary


@click.group("eval")
def eval_group():
    """Work with extract-eval outputs."""


@eval_group.command("merge")
@click.argument("shards", nargs=-1, required=True, metavar="SHARD_DIR...")
@click.option("--out", required=True, help="Directory for the merged evaluation.")
@click.option("--overwrite", is_flag=True)
def merge(shards, out, overwrite):
    """Merge `extract-eval --num-workers N --worker-index i` outputs into one evaluation: checks
    the shards share their options and cover every example exactly once, then recomputes the summary."""
    from kdstream.extract.merge import merge_shards

    print_summary(merge_shards(list(shards), out, overwrite))
