"""A Hugging Face Hub dataset card for a logit store: README.md = YAML front matter + Markdown.

``card_text`` is pure: it renders what ``store_info`` and ``store_stats`` return (the same
functions `kdstream store info` / `store stats` print), so the card's numbers are theirs, never
recomputed. ``store_card`` calls them; ``card_path`` / ``write_card`` decide where it goes and
write it atomically, never over a README.md kdstream did not write: the card's marker line
carries a sha256 of the card, so a README that merely holds the marker, or a card edited since,
is someone else's.

The README sits at the store's root, which is the dataset repo's root when the store folder is
uploaded as one; readers ignore it (stats.py counts only the group's zarr.json and its arrays).
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

from kdstream.errors import KdError
from kdstream.storage.info import store_info
from kdstream.storage.stats import format_size, store_stats

# In every card kdstream writes (an HTML comment: invisible on the Hub), sealed with the sha256 of
# the card (the marker line as MARKER): a README.md that is not such a card, byte for byte, is
# someone else's and is never replaced without --overwrite.
MARKER = "<!-- kdstream store card -->"
_SEALED = re.compile(r"^<!-- kdstream store card sha256:([0-9a-f]{64}) -->$", re.MULTILINE)
DEFAULT_LICENSE = "other"  # the Hub's value for "see the card"; "unknown" is not a Hub license id
TAGS = ("knowledge-distillation", "logits", "kdstream", "zarr")
# Hub size_categories, by example count: n<1K, 1K<n<10K, …, 100B<n<1T, n>1T
_SIZE_NAMES = ("1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T")
# options that say how the run was organised, not what it computed: left out of the command shown
_NOT_SHOWN = frozenset({"overwrite"})


def size_category(n: int) -> str:
    """The Hub's size category of ``n`` examples (``1K<n<10K`` for 1000 ≤ n < 10000)."""
    bound = 1000
    for i, name in enumerate(_SIZE_NAMES):
        if n < bound:
            return f"n<{name}" if i == 0 else f"{_SIZE_NAMES[i - 1]}<n<{name}"
        bound *= 10
    return f"n>{_SIZE_NAMES[-1]}"


def precompute_command(options: dict[str, Any]) -> str:
    """The `precompute-logits` call the store's ``options`` attribute records (engine flags
    flattened, as the CLI generates them: field ``top_k`` → ``--top-k``)."""
    flat = {k: v for k, v in options.items() if k != "engine"} | dict(options.get("engine") or {})
    parts = ["precompute-logits"]
    for key, value in flat.items():
        if value is None or key in _NOT_SHOWN:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):  # True: the flag; False: its --no- form (bool | None fields are pairs)
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def _targets(attrs: dict[str, Any], stats: dict[str, Any]) -> str:
    """What a position holds, in words."""
    e = attrs.get("encoding") or {}
    if attrs.get("targets") == "sampled":
        return (f"{e.get('samples')} draws from the teacher's top-{attrs.get('source_top_k')} + tail, kept as up to "
                f"{stats['k']} unique ids with their counts")
    sel = attrs.get("selection") or {}
    if sel.get("kind") in ("top_p", "budget"):  # ragged: a prefix of each row's top-k
        rule = f"mass {sel['p']:g}" if sel["kind"] == "top_p" else f"a budget of {sel['budget']:g} per position"
        return (f"a prefix of the teacher's {stats['k']} most probable next tokens ({rule}, {sel['min_k']}.."
                f"{sel['max_k']} entries, {stats.get('entries_mean', float('nan')):.2f} on average) with their logprobs")
    return f"the teacher's {stats['k']} most probable next tokens with their logprobs"


def _encoding(stats: dict[str, Any]) -> str:
    """As `store stats` prints it (no "|": this goes into a Markdown table)."""
    err = stats["logprob_max_abs_error"]
    return stats["logprob_encoding"] + (f", max abs error {err:.4g} nats" if err is not None else "")


def card_metadata(info: dict[str, Any], stats: dict[str, Any], license: str, name: str) -> dict[str, Any]:
    """The YAML front matter: the Hub's keys, then a ``kdstream`` mapping of the store's provenance."""
    a = info["attributes"]
    teacher, corpus, engine = a.get("teacher") or {}, a.get("corpus") or {}, a.get("engine") or {}
    kd = {
        "format": a.get("format"),
        "format_version": a.get("format_version"),
        "store_identity": stats["store_identity"],
        "teacher": {key: teacher.get(key) for key in ("name", "config_sha256", "weights_fingerprint")},
        "tokenizer": dict(a.get("tokenizer") or {}),
        "targets": a.get("targets", "topk"),
        "logprob_encoding": stats["logprob_encoding"],
        "logprob_max_abs_error": stats["logprob_max_abs_error"],
        "k": stats["k"],
        "source_top_k": a.get("source_top_k"),
        "seq_len": stats["seq_len"],
        "vocab_size": stats["vocab_size"],
        "examples": stats["examples"],
        "tokens": stats["tokens"],
        "bytes_on_disk": stats["bytes_on_disk"],
        "bytes_per_token": stats["bytes_per_token"],
        "topk_mass_mean": stats["topk_mass_mean"],
        "target_in_topk": stats["target_in_topk"],
        "corpus": dict(corpus),
        "engine": {key: engine.get(key) for key in ("name", "version", "dtype") if key in engine},
        "created_at": a.get("created_at"),
    }
    if a.get("targets") == "sampled":
        kd["samples"] = (a.get("encoding") or {}).get("samples")
    return {
        "license": license,
        "pretty_name": name,
        "tags": list(TAGS),
        "size_categories": [size_category(int(stats["examples"]))],
        "viewer": False,  # the Hub's dataset viewer cannot show a Zarr store
        "kdstream": kd,
    }


def default_name(attrs: dict[str, Any], k: int) -> str:
    teacher = (attrs.get("teacher") or {}).get("name") or "teacher"
    if attrs.get("targets") == "sampled":
        return f"{teacher} sampled logits ({(attrs.get('encoding') or {}).get('samples')} draws)"
    return f"{teacher} top-{k} logits"


def _table(a: dict[str, Any], stats: dict[str, Any], kd: dict[str, Any]) -> list[str]:
    """The card's table: the numbers `store stats` prints, formatted as it prints them, and the provenance."""
    teacher, corpus, tok, engine = kd["teacher"], kd["corpus"], kd["tokenizer"], kd["engine"]
    bpt = stats["bytes_per_token"]
    rows = [
        ("store identity", f"`{kd['store_identity']}`" if kd["store_identity"] else "none (format version < 4)"),
        ("teacher", f"{teacher.get('name')} (weights fingerprint `{teacher.get('weights_fingerprint')}`)"),
        ("tokenizer", f"sha256 `{tok.get('sha256')}`, vocabulary {tok.get('vocab_size')}; "
                      + ("its files are in the store (`kdstream store tokenizer STORE OUT` exports them)"
                         if tok.get("files") else "not in the store (pass the teacher's tokenizer directory)")),
        ("targets", f"{kd['targets']}: {_targets(a, stats)}"),
        ("logprob encoding", _encoding(stats)),
        ("examples", f"{stats['examples']} x {stats['seq_len']} tokens = {stats['tokens']:,} tokens "
                     f"(k = {stats['k']})"),
        ("bytes on disk", format_size(stats["bytes_on_disk"])),
        ("bytes per token", f"{bpt:.2f}" if bpt is not None else "unknown"),
        ("top-k mass", f"mean {stats['topk_mass_mean']:.4f}, p10 {stats['topk_mass_p10']:.4f}"),
        ("target in top-k", f"{stats['target_in_topk']:.2%}"),
        ("target NLL", f"{stats['mean_target_nll']:.4f} nats"),
        ("corpus", f"{corpus.get('source')} ({corpus.get('documents')} documents, fingerprint "
                   f"`{corpus.get('fingerprint')}`)"),
        ("engine", " ".join(str(engine[key]) for key in ("name", "version") if key in engine)
         + (f", {engine['dtype']}" if "dtype" in engine else "")),
        ("created", f"{a.get('created_at')}" + (f", precompute {a['precompute_seconds']} s"
                                                 if a.get("precompute_seconds") is not None else "")),
    ]
    if stats["rows_read"] != stats["examples"]:
        rows.append(("rows read for the fidelity figures", f"{stats['rows_read']} of {stats['examples']}"))
    # a "|" inside a cell would end it
    return ["| | |", "|---|---|", *(f"| {key} | {value.replace('|', chr(92) + '|')} |" for key, value in rows)]


def _made(a: dict[str, Any], kd: dict[str, Any]) -> list[str]:
    if not a.get("options"):
        return ["Made with kdstream; the store records no precompute options."]
    engine = kd["engine"]
    return [f"Made with kdstream's `precompute-logits` ({engine.get('name', 'engine')} {engine.get('version', '')}); "
            "the options the store records (paths are those of the machine that made it):",
            "", "```bash", precompute_command(a["options"]), "```"]


def _reading(url: str, identity: str | None) -> list[str]:
    check = f', identity="{identity}"' if identity else ""
    return [
        "```python",
        "from kdstream.torch import StoreDataset",
        f'ds = StoreDataset("{url}")   # or a local path / s3:// URL',
        "batch = ds[0]  # input_ids (L,), topk_ids (L-1, k), topk_logprobs (L-1, k), ...",
        "```",
        "",
        "Or as numpy, checking that it is this store:",
        "",
        "```python",
        "from kdstream.storage import open_store",
        f'store = open_store("{url}"{check})',
        "ex = store[0]  # dict of numpy arrays: input_ids, topk_ids, topk_logprobs, tail_mass, target_logprob, ...",
        "```",
        "",
        f"`distill --logits-store {url}` trains a student from it. `hf://` URLs go through `huggingface_hub`'s "
        "fsspec filesystem (installed with kdstream).",
        "",
        "Without kdstream, any Zarr v3 reader opens the arrays; the decoding of each is in kdstream's "
        "docs/store-format.md:",
        "",
        "```python",
        "import zarr",
        f'g = zarr.open_group("{url}", mode="r")',
        'g.attrs["encoding"], g["input_ids"][:4]  # (4, L) token ids',
        "```",
    ]


def card_text(info: dict[str, Any], stats: dict[str, Any], *, license: str = DEFAULT_LICENSE,
              name: str | None = None, repo: str | None = None) -> str:
    """README.md for the store ``info`` (store_info) and ``stats`` (store_stats) describe.

    ``repo``: the Hub dataset repo (ORG/NAME) it will be read from, for the reading example."""
    import yaml

    a = info["attributes"]
    name = name or default_name(a, stats["k"])
    meta = card_metadata(info, stats, license, name)
    kd = meta["kdstream"]
    url = f"hf://datasets/{repo or 'ORG/NAME'}"
    lic = ("The license is `other`: these are a model's outputs, so the **teacher's license** (and the "
           "corpus's terms) apply; read them before use." if license == DEFAULT_LICENSE else
           f"Declared license: `{license}`. The teacher's license and the corpus's terms may also apply.")
    return _seal("\n".join([
        "---",
        yaml.safe_dump(meta, sort_keys=False, default_flow_style=False, width=100, allow_unicode=True).rstrip(),
        "---",
        MARKER,
        "<!-- written by `kdstream store card`; rerun it to update (a card edited since is left alone). -->",
        "",
        f"# {name}",
        "",
        f"Teacher next-token distributions for knowledge distillation: a kdstream logit store (Zarr v3, "
        f"format version {kd['format_version']}). For each of {stats['examples']:,} examples of "
        f"{stats['seq_len']} tokens, the next-token distribution of the teacher ({kd['teacher'].get('name')}) at "
        "every position, where row t predicts token t + 1: " + _targets(a, stats) + ", the tail mass, and the "
        "true next token's logprob and rank. Logprobs are natural logs at temperature 1.",
        "",
        *_table(a, stats, kd),
        "",
        "The identity names these exact bytes: `kdstream store info STORE` prints it, and "
        f"`kdstream store verify {url}` checks every chunk against the store's manifest.",
        "",
        "## How it was made",
        "",
        *_made(a, kd),
        "",
        "## Reading it",
        "",
        *_reading(url, kd["store_identity"]),
        "",
        "## License",
        "",
        lic,
        "",
    ]))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _seal(text: str) -> str:
    """``text`` (holding the MARKER line once) with that line carrying the sha256 of ``text``."""
    return text.replace(f"\n{MARKER}\n", f"\n<!-- kdstream store card sha256:{_digest(text)} -->\n", 1)


def is_own_card(text: str) -> bool:
    """Whether ``text`` is a card exactly as ``store card`` wrote it (its seal matches)."""
    found = _SEALED.search(text)
    return found is not None and _digest(text[:found.start()] + MARKER + text[found.end():]) == found.group(1)


def store_card(url: str, *, license: str = DEFAULT_LICENSE, name: str | None = None, repo: str | None = None) -> str:
    """The card of the complete store at ``url``; KdError for an incomplete one (or none)."""
    if not license or license.strip() != license or " " in license:
        raise KdError(f"--license {license!r} is not a license id: pass one Hub license id, e.g. apache-2.0, "
                      f"or {DEFAULT_LICENSE}")
    if license == "unknown":
        raise KdError(f"--license unknown is not a Hub license id: use {DEFAULT_LICENSE} (the default; the card "
                      "says the teacher's license applies) or the id that applies")
    info = store_info(url)
    if info["attributes"].get("complete") is not True:
        raise KdError(f"store {url} is incomplete: a card describes a finished store; rerun precompute-logits with "
                      "the same options (or `kdstream store finalize` after parallel workers), then write the card")
    return card_text(info, store_stats(url), license=license, name=name, repo=repo)


def _is_local(url: str) -> bool:
    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(url_to_fs(str(url))[0], LocalFileSystem)


def card_path(url: str, out: str | None) -> Path:
    """Where the card goes: ``out`` (a file, or a directory to hold README.md), else STORE/README.md
    for a local store; KdError for a remote store without ``out``."""
    if out is not None:
        if not _is_local(out):
            raise KdError(f"--out {out} is not a local path: write the card locally, then upload it")
        path = Path(out)
        return path / "README.md" if path.is_dir() else path
    if not _is_local(url):
        raise KdError(f"store {url} is remote: pass --out PATH for the card (e.g. the README.md of the folder "
                      "you upload)")
    from fsspec.core import url_to_fs

    return Path(url_to_fs(str(url))[1]) / "README.md"


def check_target(path: Path, overwrite: bool) -> None:
    """KdError when ``path`` holds a file that is not a card kdstream wrote, unchanged, and not ``overwrite``."""
    if path.is_dir():
        raise KdError(f"{path} is a directory: pass a file path for the card")
    if overwrite or not path.exists():
        return
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise KdError(f"cannot read the existing {path} ({exc.strerror}): check its permissions") from None
    if is_own_card(text):
        return
    if MARKER[:-4] in text:
        raise KdError(f"{path} is not the card kdstream wrote there (edited since, or a copy of its marker line): "
                      "pass --overwrite to replace it, or --out another path")
    raise KdError(f"{path} exists and was not written by kdstream (no {MARKER} line): pass --overwrite to "
                  "replace it, or --out another path")


def write_card(path: Path, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then a rename):
    a reader, or an upload running meanwhile, sees the old card or the new one, never half of one."""
    path = Path(path)
    check_target(path, overwrite)
    if not path.parent.is_dir():
        raise KdError(f"the folder of {path} does not exist: create it, or pass another --out")
    fd, tmp = tempfile.mkstemp(prefix=".README.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: a README is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
