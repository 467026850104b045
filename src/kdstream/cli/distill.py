"""`distill` (also `python -m kdstream distill`, `torchrun -m kdstream distill`): flags come from
DistillOptions."""
from __future__ import annotations

import os

import click

from kdstream.cli.common import config_option, print_summary
from kdstream.cli.options import build, options_from
from kdstream.distill.options import DistillOptions
from kdstream.distill.trainer import train


@click.command("distill")
@config_option
@options_from(DistillOptions)
def distill(**kw):
    """Train a student from a teacher's logit store with a KL-family loss (or CE)."""
    summary = train(build(DistillOptions, kw))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line, from rank 0
        print_summary(summary)
