"""Command-line entry points. Each command parses flags into a typed options dataclass and calls
one library function; the flags are generated from the dataclass's fields (cli/options.py), and
heavy imports (torch, vLLM) happen inside the library functions so --help is fast.

Every command taking options takes ``--config FILE.yaml`` (option names as keys); flags given on
the command line override it.
"""
from __future__ import annotations

import click

from kdstream.cli import analysis, distill, extract, precompute, store, study
from kdstream.cli.errors import run_command


@click.group()
@click.version_option(package_name="kdstream")
def kdstream():
    """kdstream: offline distillation from a shareable logit store, with memorization analysis."""


for _cmd in (precompute.precompute_logits, distill.distill, extract.extract_eval, store.store, extract.eval_group,
             *analysis.ANALYSIS_COMMANDS, *study.STUDY_COMMANDS):
    kdstream.add_command(_cmd)


def main() -> None:
    run_command(kdstream)


def precompute_logits_main() -> None:
    run_command(precompute.precompute_logits)


def distill_main() -> None:
    run_command(distill.distill)


def extract_eval_main() -> None:
    run_command(extract.extract_eval)
