"""extract-eval: does the model reproduce each example's suffix from its prefix (greedy)?"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdstream.errors import KdError
from kdstream.options import options_dict, require, save_options
from kdstream.outputs import fresh_partial, publish
from kdstream.vllm_engine import EngineOptions

SUMMARY_FILE = "summary.json"  # written last: an eval directory without it is incomplete


@dataclass(frozen=True)
class ExtractOptions:
    """Greedy-decode --suffix-len tokens after the first --prefix-len tokens of every example."""

    model: str
    out: str
    logits_store: str | None = None  # examples from a teacher store (its tokenization)
    dataset: str | None = None  # or from a corpus, packed with the model's tokenizer
    prefix_len: int = 50
    suffix_len: int = 50
    offset: int = 0  # token where the prefix starts inside the example
    seq_len: int = 256  # with --dataset only
    text_field: str = "text"
    split: str = "train"
    max_examples: int | None = None
    batch_size: int = 256  # prompts per vLLM call
    overwrite: bool = False
    engine: EngineOptions = field(default_factory=EngineOptions)

    def __post_init__(self) -> None:
        require((self.logits_store is None) != (self.dataset is None),
                "pass exactly one of --logits-store STORE or --dataset DATA")
        require(self.prefix_len >= 1 and self.suffix_len >= 1, "--prefix-len and --suffix-len must be at least 1")
        require(self.offset >= 0, "--offset must be >= 0")
        require(self.batch_size >= 1, "--batch-size must be at least 1")


def _load_examples(opts: ExtractOptions, tokenizer):
    """(input_ids (S, L), example_id (S,)) from the store or the dataset."""
    if opts.logits_store is not None:
        from kdstream.data import tokenizer_fingerprint
        from kdstream.storage import open_store

        store = open_store(opts.logits_store)
        if tokenizer is not None and tokenizer_fingerprint(tokenizer)["sha256"] != store.attrs["tokenizer"]["sha256"]:
            raise KdError(
                f"the model's tokenizer differs from the store's ({opts.logits_store}): evaluate a model that "
                "shares the teacher's tokenizer, or use --dataset"
            )
        n = len(store) if opts.max_examples is None else min(len(store), opts.max_examples)
        rows = store.read(0, n, ("input_ids", "example_id"))
        return rows["input_ids"], rows["example_id"]
    from kdstream.data import load_corpus, pack_examples

    if tokenizer is None:
        raise KdError(f"model {opts.model} has no tokenizer files: --dataset needs one to tokenize the text")
    ex = pack_examples(load_corpus(opts.dataset, opts.text_field, opts.split).texts, tokenizer, opts.seq_len, opts.max_examples)
    return ex.input_ids, ex.example_id


def run_extract_eval(opts: ExtractOptions) -> dict:
    """Write ``results.parquet`` (one row per example) and ``summary.json`` under ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdstream.evaluate.metrics import match_metrics
    from kdstream.evaluate.vllm_generator import VllmGenerator
    from kdstream.model_files import check_model_dir, model_config
    from kdstream.progress import progress

    out = Path(opts.out)
    if (out / SUMMARY_FILE).exists() and not opts.overwrite:
        raise KdError(f"{out} already holds an evaluation: pass --overwrite to replace it")
    model_dir = check_model_dir(opts.model, "evaluated")
    tokenizer = None
    if any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        from kdstream.data import load_tokenizer

        tokenizer = load_tokenizer(model_dir)
    input_ids, example_id = _load_examples(opts, tokenizer)
    p0, p1, s1 = opts.offset, opts.offset + opts.prefix_len, opts.offset + opts.prefix_len + opts.suffix_len
    if s1 > input_ids.shape[1]:
        raise KdError(
            f"--offset {opts.offset} + --prefix-len {opts.prefix_len} + --suffix-len {opts.suffix_len} = {s1} "
            f"exceeds the example length {input_ids.shape[1]}: shorten them"
        )
    max_pos = model_config(model_dir).get("max_position_embeddings")
    if max_pos and s1 - p0 > max_pos:
        raise KdError(f"prefix + suffix ({s1 - p0}) exceeds the model's context ({max_pos}): shorten them")
    prefixes, truth = input_ids[:, p0:p1], input_ids[:, p1:s1]  # (S, P), (S, n)

    generator = VllmGenerator(str(model_dir), max_model_len=s1 - p0, engine=opts.engine)
    start = time.perf_counter()
    generated = []
    with progress(len(prefixes), "extract", unit="seq") as bar:
        for b in range(0, len(prefixes), opts.batch_size):
            generated.append(generator.greedy(prefixes[b : b + opts.batch_size], opts.suffix_len))
            bar.update(len(generated[-1]))
    seconds = time.perf_counter() - start
    gen = np.concatenate(generated)  # (S, n)
    m = match_metrics(gen, truth)

    partial = fresh_partial(out)
    table = pa.table({
        "example_id": example_id,
        "exact_match": m["exact"],
        "frac_matched": m["frac_matched"],
        "prefix_match_len": m["prefix_match_len"],
        "edit_distance": m["edit_distance"],
        "approx_match": m["approx"],
        "generated_ids": list(gen),
        "suffix_ids": list(truth),
    })
    pq.write_table(table, partial / "results.parquet")
    save_options(opts, partial)
    summary = {
        "model": str(model_dir),
        "examples": int(len(gen)),
        "memorized": int(m["exact"].sum()),
        "rate": float(m["exact"].mean()),
        "approx_memorized": int(m["approx"].sum()),
        "mean_frac_matched": float(m["frac_matched"].mean()),
        "prefix_len": opts.prefix_len,
        "suffix_len": opts.suffix_len,
        "offset": opts.offset,
        "method": "generate",
        "backend": generator.name,
        "seconds": round(seconds, 3),
        "sequences_per_s": round(len(gen) / seconds, 1),
        "engine": options_dict(opts.engine),
    }
    (partial / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    publish(partial, out)
    return summary
