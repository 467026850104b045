"""Checks and fingerprints of HF model directories, shared by every command."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from kdstream.errors import KdError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_BLOCK = 8 << 20  # bytes per read while hashing a weight file
_MAX_HEADER = 100 << 20  # a safetensors header larger than this is not an honest model's
# The tensors whose first dimension is the vocabulary (input embedding, output layer) in HF models.
_VOCAB_TENSOR = re.compile(r"(^|\.)(embed_in|embed_tokens|wte|word_embeddings|embed_out|lm_head)\.weight$")


def check_model_dir(path: str | Path, role: str, need_weights: bool = True) -> Path:
    """A local HF model directory with config.json, of a model type transformers knows, and
    safetensors weights that fit its ``vocab_size`` (weights needed unless ``need_weights`` is
    False; pickled weights are never loaded, so a folder holding only those is refused)."""
    p = Path(path)
    if not p.exists():
        raise KdError(f"{role} model {p} not found: pass a HF model directory (config.json + weights)")
    if p.is_file() or not (p / "config.json").is_file():
        raise KdError(f"{role} model {p} has no config.json: pass a directory written by save_pretrained")
    config = model_config(p)  # a damaged config.json fails here, not later as a misleading tokenizer or engine error
    _check_model_type(p, role, config)
    weights = sorted(f for f in p.iterdir() if f.suffix == ".safetensors")
    pickled = sorted(f.name for f in p.iterdir() if f.suffix in _PICKLED_SUFFIXES)
    if not weights and pickled:
        raise KdError(f"{role} model {p} has only pickled weights ({', '.join(pickled[:3])}): kdstream loads "
                      "safetensors weights only (a pickle can run code when loaded); convert them where you trust "
                      "the file: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR)")
    if need_weights and not weights:
        raise KdError(f"{role} model {p} has no weight files (*.safetensors): train or download it first")
    for f in weights:
        _check_vocab_rows(f, role, config["vocab_size"])
    return p


def _check_model_type(p: Path, role: str, config: dict) -> None:
    """KdError for a model type transformers does not know but the folder's own code would define
    (``auto_map``): kdstream never runs code from a model folder (trust_remote_code stays off)."""
    from transformers import __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if config.get("auto_map") and model_type not in CONFIG_MAPPING_NAMES:
        raise KdError(f"{role} model {p} has model_type {model_type!r}, which transformers {__version__} does not "
                      "know and config.json's auto_map defines in the folder's own code: kdstream runs no code "
                      "from model folders; use a model whose type transformers supports (or a newer transformers)")


def _check_vocab_rows(f: Path, role: str, vocab_size: int) -> None:
    """KdError when an embedding or output layer in safetensors file ``f`` has other than
    ``vocab_size`` rows (config.json edited, or weights of another model). Reads the header only."""
    try:
        with f.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size)) if 0 < size <= _MAX_HEADER else None
    except (OSError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise KdError(f"{role} model weights {f} are not a readable safetensors file: restore or re-download them")
    for name, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if _VOCAB_TENSOR.search(name) and isinstance(shape, list) and shape and shape[0] != vocab_size:
            raise KdError(f"{role} model {f.parent}: config.json has vocab_size {vocab_size} but {name} in {f.name} "
                          f"has {shape[0]} rows: set vocab_size to {shape[0]}, or restore the config of these weights")


def check_tokenizer_fits(path: str | Path, role: str, tokenizer, vocab_size: int | None = None) -> None:
    """KdError when ``tokenizer`` has more tokens than model ``path``'s vocabulary (``vocab_size``,
    default its config.json's): its ids past the vocabulary would index beyond the embedding."""
    vocab_size = model_config(path)["vocab_size"] if vocab_size is None else vocab_size
    if len(tokenizer) > vocab_size:
        raise KdError(f"{role} model {path} has a vocabulary of {vocab_size} but its tokenizer has {len(tokenizer)} "
                      f"tokens (ids >= {vocab_size} would index past its embedding): use the tokenizer the model was "
                      "trained with, or resize the model's embeddings")


def model_config(path: str | Path) -> dict:
    """config.json of a model directory, checked (``read_config``)."""
    return read_config(Path(path) / "config.json")


def read_config(f: Path) -> dict:
    """A model config file, checked: a JSON object whose ``vocab_size`` is a positive integer. A
    multimodal config keeps it in ``text_config``; it is then copied to the top level, where every
    caller reads it."""
    try:
        config = json.loads(f.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KdError(f"cannot read {f} ({exc.strerror or exc}): restore the model's config.json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        reason = str(exc).splitlines()[0][:120]
        raise KdError(f"{f} is not valid JSON ({reason}): restore it (save_pretrained writes it)") from None
    if not isinstance(config, dict):
        raise KdError(f"{f} holds a JSON {type(config).__name__}, not an object: restore it (save_pretrained writes it)")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    vocab = config.get("vocab_size", text.get("vocab_size"))
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        what = "has no vocab_size" if vocab is None else f"has vocab_size {vocab!r}"
        raise KdError(f"{f} {what}: set it to the size of the model's output layer (a positive integer)")
    config["vocab_size"] = vocab
    return config


# Config fields of models whose logits are more than ``lm_head(hidden)`` (Gemma-2's soft-capping,
# Cohere's logit scale, Granite's logits scaling): code that applies the plain head itself (the hf
# teacher backend, the fused training loss) must not run them.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def logit_postprocessing(config: dict) -> str | None:
    """``"field=value"`` of the first logit post-processing a HF config turns on, else None."""
    text = config.get("text_config") or config
    on = [f for f in _LOGIT_POSTPROCESSING if text.get(f) not in (None, 1, 1.0)]
    return f"{on[0]}={text[on[0]]}" if on else None


def model_fingerprint(path: str | Path) -> dict:
    """Identify a model: sha256 of config.json, and of each weight file's name, size and whole
    contents (a change anywhere in the weights, a fine-tune of one layer included, changes it).

    Hashing reads every byte once (docs/precompute.md: the cost, and why not a sample); the
    digests are cached per user by path, size, mtime and ctime (``fingerprint_cache_path``),
    so a rerun or a resume on the same files hashes nothing again."""
    p = Path(path)
    config_hash = hashlib.sha256((p / "config.json").read_bytes()).hexdigest()
    cache = load_cache()
    h = hashlib.sha256()
    for f in sorted(x for x in p.iterdir() if x.suffix in _WEIGHT_SUFFIXES):
        st = f.stat()
        h.update(f.name.encode() + st.st_size.to_bytes(8, "little"))
        h.update(bytes.fromhex(_file_sha256(f, st, cache)))
    save_cache(cache)
    return {"path": str(p.resolve()), "name": p.name, "config_sha256": config_hash, "weights_fingerprint": h.hexdigest()}


def cache_path(name: str) -> Path:
    """$XDG_CACHE_HOME/kdstream/NAME (default ~/.cache/…): the user's caches, JSON, never pickle."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kdstream" / name


def fingerprint_cache_path() -> Path:
    return cache_path("fingerprints.json")


def _file_sha256(f: Path, st: os.stat_result, cache: dict) -> str:
    """sha256 of the whole file, from ``cache`` when path, size, mtime and ctime all match (ctime
    too: restoring an mtime after an edit, as ``touch -r`` or a copy tool may, cannot fake it)."""
    key = str(f.resolve())
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}
    hit = cache.get(key)
    if isinstance(hit, dict) and all(hit.get(k) == v for k, v in stamp.items()) and _is_sha256(hit.get("sha256")):
        return hit["sha256"]
    cache[key] = {**stamp, "sha256": file_sha256(f)}
    return cache[key]["sha256"]


def file_sha256(f: Path) -> str:
    """sha256 of a whole file, read block by block."""
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def load_cache(target: Path | None = None) -> dict:
    """The entries of the cache at ``target`` (default: the fingerprints'); {} when it is missing or
    damaged (it is rewritten whole on save)."""
    try:
        data = json.loads((target or fingerprint_cache_path()).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_cache(cache: dict, target: Path | None = None) -> None:
    """Write the cache at ``target`` (default: the fingerprints') atomically (a concurrent worker
    never reads half of it); a cache that cannot be written only costs a rehash next time."""
    target = target or fingerprint_cache_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(cache, fh)
        os.replace(tmp, target)
    except OSError:
        pass
