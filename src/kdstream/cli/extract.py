"""`extract-eval` (flags from ExtractOptions and its EngineOptions) and `kdstream eval merge
SHARD_DIR... --out DIR`, which joins extract-eval shards (--num-workers N)."""
from __future__ import annotations

import click

from kdstream.cli.common import config_option, print_summary
from kdstream.cli.options import build, options_from
from kdstream.extract.run import ExtractOptions, run_extract_eval


@click.command("extract-eval")
@config_option
@options_from(ExtractOptions)
def extract_eval(**kw):
    """Prefix → suffix extraction (greedy, teacher-forced, or from the store); writes
    results.parquet, prefix_sweep.parquet and summary.json."""
    opts = build(ExtractOptions, kw)
    after = None
    if opts.features:  # a composition here: extraction itself imports no analysis
        from kdstream.analysis.features_run import features_after_extract

        after = features_after_extract(opts)
    print_summary(run_extract_eval(opts, after=after))


@click.group("eval")
def eval_group():
    """Work with extract-eval outputs."""


@eval_group.command("merge")
@click.argument("shards", nargs=-1, required=True, metavar="SHARD_DIR...")
@click.option("--out", required=True, help="Directory for the merged evaluation.")
@click.option("--overwrite", is_flag=True, help="Replace an existing evaluation in --out.")
def merge(shards, out, overwrite):
    """Merge `extract-eval --num-workers N --worker-index i` outputs into one evaluation: checks
    the shards share their options and cover every example exactly once, then recomputes the summary."""
    from kdstream.extract.merge import merge_shards

    print_summary(merge_shards(list(shards), out, overwrite))
