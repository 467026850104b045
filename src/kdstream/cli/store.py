"""`kdstream store info|verify|stats|finalize STORE`: look inside a logit store (path or fsspec URL).

Only argument parsing and printing live here; the work is in kdstream.storage.verify/stats.
User errors are KdError, which the `kdstream` entry point prints as one line (exit 2).
"""
from __future__ import annotations

import json
import sys

import click

# `store info` shows these first, in this order; every other attribute follows as stored.
_INFO_FIRST = (
    "format", "format_version", "complete", "created_at", "num_examples", "seq_len", "k", "vocab_size",
    "targets", "encoding", "source_top_k", "chunk_rows", "teacher", "tokenizer", "corpus", "engine",
    "precompute_seconds", "dtypes",
)


@click.group("store")
def store():
    """Inspect a logit store: provenance (info), integrity (verify), size and fidelity (stats);
    finish one written by parallel workers (finalize)."""


@store.command("info")
@click.argument("url", metavar="STORE")
def info(url):
    """Print the store's identity and attributes: teacher, tokenizer, shapes, corpus, versions, options.

    The identity (format version 4) names this finalized store, checked against its integrity
    record; other tools record it as `store_identity`."""
    import yaml

    from kdstream.errors import KdError
    from kdstream.storage.integrity import identity_of
    from kdstream.storage.verify import open_group

    group = open_group(url)
    attrs = dict(group.attrs)  # also works on an incomplete store: it shows complete: false
    try:
        ident = identity_of(group, url, attrs) or "none (incomplete, or format version < 4)"
    except KdError as exc:  # still show the attributes: they say what the store claims to be
        ident = f"none: {exc}"
    ordered = {key: attrs[key] for key in _INFO_FIRST if key in attrs}
    ordered.update({key: value for key, value in attrs.items() if key not in ordered})
    click.echo(f"store: {url}")
    click.echo(f"identity: {ident}")
    click.echo(yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False, width=100).rstrip())


@store.command("verify")
@click.argument("url", metavar="STORE")
def verify(url):
    """Read every chunk and check its crc32c checksum; name each corrupt chunk.

    Exit status 0 when the store is intact and complete, 1 otherwise.
    """
    from kdstream.storage.verify import verify_store

    report = verify_store(url)
    for line in report.corrupt:
        click.echo(f"corrupt: {line}")
    for line in report.problems:
        click.echo(f"problem: {line}")
    if report.ok:
        click.echo(f"ok: {report.chunks_checked} chunks checked, all intact; store complete")
        return
    click.echo(
        f"FAILED: {len(report.corrupt)} corrupt chunk(s), {len(report.problems)} other problem(s) "
        f"in {report.chunks_checked} chunks checked"
    )
    # sys.exit, not ctx.exit: the kdstream entry point runs click with standalone_mode=False,
    # where ctx.exit's status would be returned and dropped instead of becoming the exit status.
    sys.exit(1)


@store.command("finalize")
@click.argument("url", metavar="STORE")
def finalize(url):
    """Mark a store written by `precompute-logits --num-workers N` complete, once every worker is done.

    Checks that every chunk was written (and has its files, each passing its checksum) and that
    each example is present exactly once, then writes the manifest of chunk checksums, the
    attributes' checksum and `complete: true`. A missing chunk is an error
    naming it and the worker that owns it (exit 2); the store stays incomplete.
    """
    from kdstream.storage.finalize import finalize_store

    manifest = finalize_store(url)
    state = "already complete" if manifest["already_complete"] else "complete"
    click.echo(f"{state}: {url}: {manifest.get('examples')} examples in {manifest.get('chunks')} chunks"
               + (f"; identity {manifest['identity']}" if manifest.get("identity") else ""))


def _size(n) -> str:
    if n is None:
        return "unknown (the filesystem cannot list)"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n:,} B ({n / scale:.2f} {unit})"
    return f"{n:,} B"


@store.command("stats")
@click.argument("url", metavar="STORE")
@click.option("--sample-rows", type=click.IntRange(min=1), default=None,
              help="Read only the first N examples (sizes still cover the whole store).")
@click.option("--reference-model", default=None,
              help="HF model dir (the teacher): also print the mean KL(full teacher || stored approximation).")
@click.option("--kl-examples", type=click.IntRange(min=1), default=8, show_default=True,
              help="Examples (all their positions) the KL is measured on.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where --reference-model runs: auto = CUDA when available.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def stats(url, sample_rows, reference_model, kl_examples, device, as_json):
    """Bytes on disk and per token, top-k probability mass kept, target coverage, teacher NLL,
    the encoding's logprob error bound, and with --reference-model the KL lost by the store."""
    from kdstream.storage.stats import store_stats

    s = store_stats(url, sample_rows=sample_rows)
    if reference_model:  # storage loads no model: the KL against one is analysis, composed here
        from kdstream.analysis.reference_kl import reference_kl

        s.update(reference_kl(url, reference_model, examples=kl_examples, device=device))
    if as_json:
        click.echo(json.dumps(s))
        return
    bpt = s["bytes_per_token"]
    lines = [
        f"store:            {s['store']}",
        f"examples:         {s['examples']} x {s['seq_len']} tokens = {s['tokens']:,} tokens (k = {s['k']})",
        f"bytes on disk:    {_size(s['bytes_on_disk'])}",
        f"bytes per token:  {bpt:.2f}" if bpt is not None else "bytes per token:  unknown",
        *(f"  {name + ':':16}{_size(b)}" for name, b in s["array_bytes"].items()),
        f"rows read:        {s['rows_read']} ({s['positions_read']:,} positions)",
        f"top-k mass:       mean {s['topk_mass_mean']:.4f}, p10 {s['topk_mass_p10']:.4f}",
        f"tail mass:        mean {s['tail_mass_mean']:.4f}",
        f"target in top-k:  {s['target_in_topk']:.2%}",
        f"target NLL:       {s['mean_target_nll']:.4f} nats",
        f"logprob encoding: {s['logprob_encoding']}" + (
            f", max |error| {s['logprob_max_abs_error']:.4g} nats" if s["logprob_max_abs_error"] is not None else ""),
    ]
    if "kl_full_mean" in s:
        lines += [
            f"KL(teacher||store): {s['kl_full_mean']:.5f} nats/position (tail spread over V-k), "
            f"{s['kl_bucket_mean']:.2e} over top-k + bucket ({s['kl_positions']:,} positions of {s['reference_model']})",
        ]
    click.echo("\n".join(lines))
