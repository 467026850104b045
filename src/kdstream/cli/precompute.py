"""`precompute-logits`: the teacher pass. Flags come from PrecomputeOptions (and its EngineOptions)."""
from __future__ import annotations

import click

from kdstream.cli.common import config_option, print_summary
from kdstream.cli.options import build, options_from
from kdstream.precompute.runner import PrecomputeOptions, run_precompute


@click.command("precompute-logits")
@config_option
@options_from(PrecomputeOptions)
def precompute_logits(**kw):
    """Run the teacher once (vLLM or transformers) and write its top-k next-token distributions to a Zarr store."""
    print_summary(run_precompute(build(PrecomputeOptions, kw)))
