"""`kdstream store info|verify|stats|finalize|card|tokenizer STORE`: look inside a logit store (path
or fsspec URL), finish one, describe it for sharing, export the tokenizer it carries.

Only argument parsing and printing live here; the work is in kdstream.storage (info, verify,
stats, finalize, card, tokenizer_files).
User errors are KdError, which the `kdstream` entry point prints as one line (exit 2).
"""
from __future__ import annotations

import json
import sys

import click

from kdstream.options import DEVICES


@click.group("store")
def store():
    """Inspect a logit store: provenance (info), integrity (verify), size and fidelity (stats);
    finish one written by parallel workers (finalize); write its dataset card for sharing (card);
    export the teacher's tokenizer it carries (tokenizer)."""


@store.command("info")
@click.argument("url", metavar="STORE")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: store, identity, identity_note, checked, tokenizer_files, size (complete "
                   "stores: examples, tokens, target_positions, bytes, bytes_per_token, bytes_per_target_position), "
                   "attributes.")
def info(url, as_json):
    """Print the store's identity and attributes: teacher, tokenizer, shapes, corpus, versions, options.

    The identity (format version 4) names this finalized store, checked against its integrity
    record; other tools record it as `store_identity`."""
    import yaml

    from kdstream.storage.info import store_info

    i = store_info(url)
    if as_json:
        click.echo(json.dumps(i))
        return
    click.echo(f"store: {url}")
    # no identity: "none (incomplete, …)", or "none: <why its integrity record fails>"
    note = i["identity_note"]
    click.echo(f"identity: {i['identity'] or ('none: ' + note if i['checked'] else f'none ({note})')}")
    files = i["tokenizer_files"]
    click.echo(f"tokenizer files: {', '.join(files)} (kdstream store tokenizer STORE OUT)" if files else
               "tokenizer files: none (a store written before stores carried their tokenizer)")
    if "size" in i:
        z = i["size"]
        click.echo(f"size: {z['examples']} examples, {z['tokens']} tokens, {z['target_positions']} target positions, "
                   f"{z['bytes']} bytes ({z['bytes_per_token']} per token, {z['bytes_per_target_position']} per "
                   "target position)")
    click.echo(yaml.safe_dump(i["attributes"], sort_keys=False, default_flow_style=False, width=100).rstrip())


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


@store.command("stats")
@click.argument("url", metavar="STORE")
@click.option("--sample-rows", type=click.IntRange(min=1), default=None,
              help="Read only the first N examples (sizes still cover the whole store).")
@click.option("--reference-model", default=None,
              help="HF model dir (the teacher): also print the mean KL(full teacher || stored approximation).")
@click.option("--kl-examples", type=click.IntRange(min=1), default=8, show_default=True,
              help="Examples (all their positions) the KL is measured on.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where --reference-model runs: auto = CUDA when available.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def stats(url, sample_rows, reference_model, kl_examples, device, as_json):
    """Bytes on disk and per token, top-k probability mass kept, target coverage, teacher NLL,
    the encoding's logprob error bound, and with --reference-model the KL lost by the store."""
    from kdstream.storage.stats import format_size, store_stats

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
        (f"examples:         {s['examples']} x {s['seq_len']} tokens = {s['tokens']:,} tokens (k = {s['k']})"
         if s["tokens"] == s["examples"] * s["seq_len"] else
         f"examples:         {s['examples']} conversations, {s['tokens']:,} tokens (at most {s['seq_len']} each; "
         f"k = {s['k']})"),
        f"bytes on disk:    {format_size(s['bytes_on_disk'])}",
        f"bytes per token:  {bpt:.2f}" if bpt is not None else "bytes per token:  unknown",
        *(f"  {name + ':':16}{format_size(b)}" for name, b in s["array_bytes"].items()),
        f"rows read:        {s['rows_read']} ({s['positions_read']:,} positions)",
        f"entries/position: mean {s['entries_mean']:.2f}, p10 {s['entries_p10']:.0f}, p90 {s['entries_p90']:.0f} "
        f"({_selection(s['selection'])})",
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


def _selection(sel: dict) -> str:
    """``top-k 8`` / ``top-p 0.9, 1..64 entries`` / ``budget 16, 1..64 entries``: how rows were chosen."""
    if sel.get("kind") == "top_p":
        return f"top-p {sel['p']:g}, {sel['min_k']}..{sel['max_k']} entries"
    if sel.get("kind") == "budget":
        return f"budget {sel['budget']:g}, {sel['min_k']}..{sel['max_k']} entries"
    return f"top-k {sel.get('max_k')}"


@store.command("card")
@click.argument("url", metavar="STORE")
@click.option("--license", "license_", default="other", show_default=True,
              help="The card's Hub license id (SPDX-style, e.g. apache-2.0). `other`: the card says the "
                   "teacher's license applies.")
@click.option("--name", default=None, help="The card's title and pretty_name (default: teacher and targets).")
@click.option("--repo", default=None, metavar="ORG/NAME",
              help="The Hub dataset repo it will be read from: used in the card's reading example.")
@click.option("--out", default=None, metavar="PATH",
              help="Where to write the card (a file, or a folder for README.md); required for a remote "
                   "STORE. Default: STORE/README.md.")
@click.option("--overwrite", is_flag=True, help="Replace a README.md that kdstream did not write.")
def card(url, license_, name, repo, out, overwrite):
    """Write a Hugging Face Hub dataset card (README.md: YAML metadata + Markdown) for a complete store.

    Its numbers are those `store info` and `store stats` print. An existing README.md is replaced
    only when kdstream wrote it (or with --overwrite). Then upload the store folder as a dataset
    repo: docs/sharing.md."""
    from kdstream.storage.card import card_path, check_target, store_card, write_card

    path = card_path(url, out)
    check_target(path, overwrite)  # before reading the store: refuse at once
    text = store_card(url, license=license_, name=name, repo=repo)
    write_card(path, text, overwrite)
    click.echo(f"wrote {path}")


@store.command("tokenizer")
@click.argument("url", metavar="STORE")
@click.argument("out", metavar="OUT")
def tokenizer(url, out):
    """Write the teacher's tokenizer the store carries into the new folder OUT, so that
    `AutoTokenizer.from_pretrained(OUT)` (or `distill --teacher-tokenizer OUT`) loads it.

    Each file is checked against the sha256 the store records, and the tokenizer loaded from them
    against the store's fingerprint, before OUT appears (written beside it, then renamed). An
    existing OUT with anything in it is refused; so is a store written before stores carried
    their tokenizer (use the teacher's own tokenizer directory)."""
    from kdstream.storage import open_store
    from kdstream.storage.tokenizer_files import export_tokenizer

    names = export_tokenizer(open_store(url), out)
    click.echo(f"wrote {out}: {', '.join(names)}")
