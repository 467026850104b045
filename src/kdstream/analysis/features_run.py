"""``kdstream features``: one fp32 transformers pass of a model over a teacher store's examples
-> ``features.parquet`` (one row per example_id: ppl, bits_per_byte, suffix_ppl, min_k, teacher_kl against the
store's top-k, zlib_entropy, zlib_ratio, and the teacher's own perplexity read from the store).

The per-example maths lives in ``features.py``; this file reads the store chunk by chunk, checks
the model against it and writes the directory (under ``OUT.partial``, published at the end).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kdstream.analysis.files import FEATURE_COLUMNS, FEATURES_DIR, FEATURES_FILE, SUMMARY_FILE, jsonable, write_json
from kdstream.errors import KdError
from kdstream.options import check_device, device_option, option, require, save_options
from kdstream.outputs import check_output, fresh_partial, publish

if TYPE_CHECKING:
    from kdstream.extract import ExtractOptions

_STORE_KEYS = ("input_ids", "example_id", "topk_ids", "topk_logprobs", "target_logprob")


@dataclass(frozen=True)
class FeaturesOptions:
    """Score every example of a teacher store with one model (fp32, transformers)."""

    model: str = option(help="HF model directory (teacher or baseline); one of another tokenizer than the store's is "
                             "scored on the text's bytes (features_cross.py).")
    logits_store: str = option(help="Teacher store (path or URL): the examples and the teacher's top-k.")
    out: str = option(help="Directory for features.parquet, options.yaml and summary.json.")
    # suffix_ppl covers tokens [prefix_len, prefix_len + suffix_len)
    prefix_len: int = option(50, "suffix_ppl starts after this many tokens.")
    suffix_len: int = option(50, "Tokens scored by suffix_ppl.")
    batch_size: int = option(16, "Examples per forward pass.")
    max_examples: int | None = option(None, "Score only the first N examples.")
    overwrite: bool = option(False, "Replace existing features in --out.")
    device: str = device_option("the model runs")

    def __post_init__(self) -> None:
        from kdstream.storage.union import several_stores

        check_device(self.device)
        require(bool(self.model) and bool(self.logits_store) and bool(self.out),
                "pass --model DIR, --logits-store STORE and --out DIR")
        require(not several_stores(self.logits_store),
                f"--logits-store {self.logits_store}: features reads one store (only distill reads several, "
                "comma-separated, as one): score each store in its own run (a comma that is part of a path is "
                "written \\,)")
        require(isinstance(self.prefix_len, int) and self.prefix_len >= 1, f"--prefix-len {self.prefix_len} must be at least 1")
        require(isinstance(self.suffix_len, int) and self.suffix_len >= 1, f"--suffix-len {self.suffix_len} must be at least 1")
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, f"--batch-size {self.batch_size} must be at least 1")
        require(self.max_examples is None or (isinstance(self.max_examples, int) and self.max_examples >= 1),
                f"--max-examples {self.max_examples} must be at least 1")


def _load_scoring_model(opts: FeaturesOptions, store):
    """(model in eval mode, fp32, on ``opts.device``; tokenizer; the store's tokenizer when the
    model's differs (scored across tokenizers: features_cross.py), else None) after every check
    that needs no weights."""
    from kdstream.model_files import check_model_dir, check_tokenizer_fits, model_config
    from kdstream.text.match import tokenizers_match
    from kdstream.text.tokenizers import has_tokenizer, load_tokenizer

    model_dir = check_model_dir(opts.model, "scored")
    if not has_tokenizer(model_dir):
        raise KdError(f"model {model_dir} has no tokenizer files: save the teacher's tokenizer with it "
                      "(features decode the text and must check it matches the store's)")
    tokenizer = load_tokenizer(model_dir)
    check_tokenizer_fits(model_dir, "scored", tokenizer)
    examples_tok = None
    if not tokenizers_match(tokenizer, store):
        from kdstream.storage.tokenizer_files import teacher_tokenizer

        examples_tok = teacher_tokenizer(store, None, missing=(
            f"the tokenizer of {model_dir} differs from the store's ({opts.logits_store}), which carries no "
            "tokenizer to align with: score a model that shares the teacher's tokenizer"))
    config = model_config(model_dir)
    vocab = config.get("vocab_size")
    if examples_tok is None and vocab is not None and int(vocab) < store.vocab_size:
        raise KdError(f"model {model_dir} has {vocab} output classes, fewer than the store's vocabulary "
                      f"({store.vocab_size}): score a model built for the teacher's vocabulary")
    max_pos = config.get("max_position_embeddings")
    if max_pos and int(max_pos) < store.seq_len:  # across tokenizers: ≈ as many tokens (checked per example)
        raise KdError(f"examples of {store.seq_len} tokens exceed the context of {model_dir} ({max_pos}): "
                      "use a store with shorter --seq-len")
    from kdstream.engines.hf import load_causal_lm

    model = load_causal_lm(model_dir, "float32", opts.device)
    return model, tokenizer, examples_tok


def _byte_table(tokenizer) -> np.ndarray | None:
    """(V,) UTF-8 bytes of each token id, or None (bits_per_byte left NaN, with a warning) for a
    tokenizer that is neither byte-level BPE nor SentencePiece-style."""
    import sys

    from kdstream.text.token_bytes import byte_vocab

    try:
        return byte_vocab(tokenizer).lengths
    except KdError as exc:
        print(f"warning: bits_per_byte left empty: {exc}", file=sys.stderr)
        return None


def run_features(opts: FeaturesOptions) -> dict:
    """Write ``features.parquet`` (one row per example), ``options.yaml`` and ``summary.json``
    (last) into ``opts.out``; return the summary.

    Columns (``FEATURE_COLUMNS``): ppl (tokens 1..L-1), bits_per_byte (the same tokens' CE in bits
    per UTF-8 byte of their text: comparable across tokenizers; NaN for a tokenizer whose bytes
    per token are unknown, text/token_bytes.py), suffix_ppl (the extraction suffix), min_k
    (Min-K% Prob, k = 0.2), teacher_kl (mean over positions of KL(teacher ‖ model) on the store's
    top-k + tail; ≈ 0 for the teacher itself, the paper's teacher–baseline KL for the baseline),
    teacher_ppl_from_store (exp(−mean target_logprob): the teacher's perplexity, no model),
    zlib_entropy (bytes of the zlib-compressed decoded text), zlib_ratio (log ppl / zlib) and
    text_bytes (the decoded text's UTF-8 length, which the zlib entropy grows with). The store is
    read whole chunks at a time (``store.chunk_rows`` rows), never row by row.
    """
    from kdstream.analysis.features import model_features, perplexity, text_features, zlib_ratio
    from kdstream.storage import open_stores

    out = Path(opts.out)
    check_output(out, "features", replace=opts.overwrite)
    store = open_stores(opts.logits_store)
    if store.conversations:  # scored at its assistant targets: features_conversations.py
        from kdstream.analysis.features_conversations import check_conversation_features

        check_conversation_features(opts, store)
    elif opts.prefix_len + opts.suffix_len > store.seq_len:
        raise KdError(f"--prefix-len {opts.prefix_len} + --suffix-len {opts.suffix_len} exceeds the example length "
                      f"{store.seq_len} of {opts.logits_store}: shorten them")
    n = len(store) if opts.max_examples is None else min(len(store), opts.max_examples)
    if n == 0:
        raise KdError(f"store {opts.logits_store} holds no examples: precompute a store with examples")
    model, tokenizer, examples_tok = _load_scoring_model(opts, store)
    if store.conversations:
        from kdstream.analysis.features_conversations import run_conversation_features

        table, summary = run_conversation_features(opts, store, model, tokenizer, examples_tok, n)
        _publish_features(out, opts, table, summary)
        return summary
    if examples_tok is not None:
        return _run_cross_features(opts, store, model, tokenizer, examples_tok, out, n)

    byte_table = _byte_table(tokenizer)

    def score(rows) -> dict[str, np.ndarray]:
        f = model_features(model, rows["input_ids"], prefix_len=opts.prefix_len, suffix_len=opts.suffix_len,
                           topk_ids=rows["topk_ids"], topk_logprobs=rows["topk_logprobs"],
                           token_bytes=None if byte_table is None else byte_table[rows["input_ids"][:, 1:]],
                           batch_size=opts.batch_size)
        text = text_features(tokenizer, rows["input_ids"])
        return {**{name: f[name] for name in ("ppl", "suffix_ppl", "min_k", "teacher_kl")},
                "bits_per_byte": f.get("bits_per_byte", np.full(len(f["ppl"]), np.nan)),
                "teacher_ppl_from_store": perplexity(rows["target_logprob"]),
                "zlib_entropy": text["zlib_entropy"], "zlib_ratio": zlib_ratio(f["ppl"], text["zlib_entropy"]),
                "text_bytes": text["text_bytes"]}

    table, seconds = score_in_chunks(store, n, _STORE_KEYS, FEATURE_COLUMNS, score)

    summary = {
        "model": str(opts.model),
        "logits_store": str(opts.logits_store),
        "examples": int(n),
        "seq_len": store.seq_len,
        "k": store.k,
        "prefix_len": opts.prefix_len,
        "suffix_len": opts.suffix_len,
        "tokenizer_sha256": store.attrs["tokenizer"]["sha256"],
        "store_identity": getattr(store, "identity", None),  # the manifest hash: which store, not which path
        "mean": {c: float(np.mean(table[c])) for c in FEATURE_COLUMNS if c != "example_id"},
        "median": {c: float(np.median(table[c])) for c in FEATURE_COLUMNS if c != "example_id"},
        "seconds": round(seconds, 3),
        "sequences_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }
    _publish_features(out, opts, table, summary)
    return jsonable(summary)


def _run_cross_features(opts: FeaturesOptions, store, model, tokenizer, examples_tok, out: Path, n: int) -> dict:
    """``run_features`` for a model of another tokenizer (features_cross.py): the same columns
    (suffix_ppl and teacher_kl NaN; ppl and min_k on the model's own tokens) plus
    ``teacher_llr_per_byte``; summary.json says ``mode: cross_tokenizer``."""
    from kdstream.analysis.features import perplexity, text_features, zlib_ratio
    from kdstream.analysis.features_cross import CROSS_MODE, LLR_COLUMN, cross_model_features
    from kdstream.text.align import Aligner

    aligner = Aligner(examples_tok, tokenizer)
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)

    def score(rows) -> dict[str, np.ndarray]:
        f = cross_model_features(model, aligner, rows["input_ids"], rows["target_logprob"], pad, opts.batch_size)
        text = text_features(examples_tok, rows["input_ids"])  # the same text
        nan = np.full(len(f["ppl"]), np.nan)
        return {**{name: f[name] for name in ("ppl", "bits_per_byte", "min_k", LLR_COLUMN)},
                "suffix_ppl": nan, "teacher_kl": nan, "teacher_ppl_from_store": perplexity(rows["target_logprob"]),
                "zlib_entropy": text["zlib_entropy"], "zlib_ratio": zlib_ratio(f["ppl"], text["zlib_entropy"]),
                "text_bytes": text["text_bytes"]}

    table, seconds = score_in_chunks(store, n, ("input_ids", "example_id", "target_logprob"),
                                     (*FEATURE_COLUMNS, LLR_COLUMN), score)
    scored = [c for c in table if c != "example_id"]
    summary = {
        "model": str(opts.model), "logits_store": str(opts.logits_store), "examples": int(n),
        "seq_len": store.seq_len, "k": store.k, "prefix_len": opts.prefix_len, "suffix_len": opts.suffix_len,
        "tokenizer_sha256": store.attrs["tokenizer"]["sha256"], "mode": CROSS_MODE,
        "unaligned": int(np.isnan(table["bits_per_byte"]).sum()),
        "store_identity": getattr(store, "identity", None),
        "mean": {c: float(np.nanmean(table[c])) if np.isfinite(table[c]).any() else None for c in scored},
        "median": {c: float(np.nanmedian(table[c])) if np.isfinite(table[c]).any() else None for c in scored},
        "seconds": round(seconds, 3),
        "sequences_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }
    _publish_features(out, opts, table, summary)
    return jsonable(summary)


def score_in_chunks(store, n: int, keys, columns, score) -> tuple[dict[str, np.ndarray], float]:
    """The first ``n`` examples read a store chunk at a time and scored by ``score(rows)`` ({column:
    (rows,)} for every one of ``columns`` but example_id), under a progress bar: ({column: (n,)}
    in ``columns``' order, the seconds it took)."""
    from kdstream.progress import progress

    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    start_time = time.perf_counter()
    with progress(n, "features", unit="seq") as bar:
        for start in range(0, n, store.chunk_rows):
            rows = store.read(start, min(start + store.chunk_rows, n), keys)
            f = score(rows)
            parts["example_id"].append(rows["example_id"])
            for c in columns[1:]:
                parts[c].append(f[c])
            bar.update(len(rows["example_id"]))
    return {c: np.concatenate(v) for c, v in parts.items()}, time.perf_counter() - start_time


def _publish_features(out: Path, opts: FeaturesOptions, table: dict[str, np.ndarray], summary: dict) -> None:
    """features.parquet, options.yaml, then summary.json (last) in a fresh partial, published as ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    partial = fresh_partial(out, "features")
    pq.write_table(pa.table(table), partial / FEATURES_FILE)
    save_options(opts, partial)
    write_json(partial / SUMMARY_FILE, summary)
    publish(partial, out, "features")


def features_after_extract(opts: ExtractOptions) -> Callable[[Path], dict]:
    """``extract-eval --features``: the step ``run_extract_eval(opts, after=…)`` runs on its partial
    directory, writing FEATURES_DIR there (the model scored against ``opts.logits_store`` at the
    primary prefix length), so the evaluation is published with its features or not at all."""

    def after(partial: Path) -> dict:
        fopts = FeaturesOptions(model=str(Path(opts.model)), logits_store=opts.logits_store, out=str(partial / FEATURES_DIR),
                                prefix_len=opts.prefix_len[0], suffix_len=opts.suffix_len,
                                max_examples=opts.max_examples, device=opts.device)
        _run_isolated(fopts)
        return {"features": str(Path(opts.out) / FEATURES_DIR)}

    return after


def _run_isolated(fopts: FeaturesOptions) -> None:
    """``run_features(fopts)``; in a spawned process once vLLM is imported here, because vLLM
    patches transformers' model classes (GPTNeoXModel then asserts a vLLM config), so no HF model
    can be built in this process any more. A KdError in the child is re-raised here."""
    import multiprocessing
    import sys

    if "vllm" not in sys.modules:
        run_features(fopts)
        return
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(run_features, (fopts,))
