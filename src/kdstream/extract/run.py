"""extract-eval: does the model reproduce each example's suffix from its prefix (greedy)?

Three ways to the same verdict (``method``):
    generate  greedy decoding of the suffix (the reference; also edit distance, approx match)
    fast      one teacher-forced pass over prefix + suffix (extract/fast_path.py): the same
              exact-match verdict and first divergence, plus a near-tie margin;
              no decoding steps, and one pass for all prefix lengths of a sweep (per prefix
              length, on a 2-core CPU as fast as generate, whose decode steps are compute-bound
              there too: docs/benchmarks.md)
    both      generate and fast, every disagreement reported (disagreements.parquet)
    store     the teacher's verdict read from its logit store (target_rank == 1), no model
on vLLM or HF transformers (``backend``), for one or several prefix lengths, optionally as one
shard of ``num_workers`` (merged by ``kdstream eval merge``).

Windows: the prefix is ``input_ids[offset : offset+P]`` and the suffix the ``suffix_len`` tokens
right after it (the paper's prefix 50 → next 50 tokens), so a longer prefix shifts the suffix
along the example. A sweep with the suffix at one fixed position and more context before it is
the same rule with ``offset`` moved back by the extra length, run once per prefix length; the
shifting rule lets one run sweep, and every prefix length is judged on the same number of tokens.

Tokenizers (``mode`` in the summary): a model that shares the examples' tokenizer is judged on
tokens (``same_tokenizer``); one with another tokenizer (``cross_tokenizer``, the examples'
tokenizer the one the store carries, or ``--teacher-tokenizer``) gets the prefix as text re-tokenized and is judged on the
suffix's bytes (extract/cross_tokenizer.py), with ``--method generate`` only. ``--match bytes``
judges a same-tokenizer model on bytes too, for comparisons across tokenizers.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdstream.engines.vllm import EngineOptions
from kdstream.errors import KdError
from kdstream.extract.backends import BACKENDS
from kdstream.options import (
    check_device,
    check_shard,
    corpus_option,
    device_option,
    option,
    options_dict,
    require,
    save_options,
)
from kdstream.outputs import check_output, fresh_partial, publish

METHODS = {"generate": ["generate"], "fast": ["fast"], "both": ["generate", "fast"], "store": ["store"]}
MATCHES = ("auto", "tokens", "bytes")


def parse_prefix_lens(value) -> tuple[int, ...]:
    """50, "32,48" or [32, 48] → (32, 48); the first is the primary prefix length."""
    if isinstance(value, str):
        items = value.strip("[]() ").split(",")
    else:
        items = value if isinstance(value, (list, tuple)) else [value]
    try:
        lens = tuple(int(str(v).strip()) for v in items)
    except ValueError:
        raise KdError(f"--prefix-len {value!r} is not a comma list of integers: pass e.g. 50 or 32,48") from None
    require(len(lens) > 0 and min(lens) >= 1, "--prefix-len values must be at least 1")
    require(len(set(lens)) == len(lens), f"--prefix-len {value!r} repeats a length: list each once")
    return lens


@dataclass(frozen=True)
class ExtractOptions:
    """Greedy-decode --suffix-len tokens after --prefix-len tokens (from --offset) of every example."""

    model: str | None = option(help="Model directory to evaluate (not needed by --method store).", required=False)
    out: str = option(help="Directory for results.parquet, prefix_sweep.parquet and summary.json.")
    logits_store: str | None = option(None, "Take the examples from this store (its tokenization).")
    dataset: str | None = option(None, "Or from a corpus, packed with the model's tokenizer like the store.")
    # the first is primary (results.parquet)
    prefix_len: tuple[int, ...] = option((50,), "Prefix tokens; a comma list (32,48) sweeps several, the first "
                                                "is primary.", parse=parse_prefix_lens)
    suffix_len: int = option(50, "Suffix tokens, right after the prefix (a longer prefix shifts the suffix).")
    offset: int = option(0, "Where the prefix starts.")
    seq_len: int = option(256, "With --dataset only.")
    text_field: str = corpus_option("text_field")
    split: str = corpus_option("split")
    max_examples: int | None = option(None, "Evaluate only the first N examples.")
    batch_size: int = option(256, "Prompts per engine call.")
    method: str = option("generate", "generate (greedy decoding) | fast (one teacher-forced pass, same exact-match "
                                     "verdict) | both (and report disagreements) | store (teacher's verdict from "
                                     "--logits-store, no model)")
    backend: str = option("vllm", "vllm | hf (transformers, for models vLLM cannot load)")
    chat_template: str | None = option(None, "A conversation store and a --model of another tokenizer: the "
                                             "model's chat template (a Jinja file), when its tokenizer has none "
                                             "(distill saves the one a student was trained with).")
    teacher_tokenizer: str | None = option(None, "The examples' (store's, teacher's) tokenizer, a directory: "
                                                 "needed for a --model with another tokenizer (judged on the "
                                                 "suffix's bytes). With --dataset: pack the corpus with it.")
    match: str = option("auto", "auto (tokens when the model shares the examples' tokenizer, else bytes) | "
                                "tokens | bytes (exact match on the suffix's UTF-8 bytes, greedy decoding only)")
    num_workers: int = option(1, "Shard the examples over N workers.")
    worker_index: int = option(0, "This worker's share (0..N-1); join the shards with `kdstream eval merge`.")
    overwrite: bool = option(False, "Replace an existing evaluation in --out.")
    features: bool = option(False, "Also score the model against --logits-store (ppl, suffix ppl, Min-K%, KL to "
                                   "the teacher, zlib) into OUT/features/, as `kdstream features` does.")
    device: str = device_option("a HF model runs (--backend hf, --features)")
    engine: EngineOptions = field(default_factory=EngineOptions)

    def __post_init__(self) -> None:
        from kdstream.storage.union import several_stores

        object.__setattr__(self, "prefix_len", parse_prefix_lens(self.prefix_len))
        require((self.logits_store is None) != (self.dataset is None),
                "pass exactly one of --logits-store STORE or --dataset DATA")
        require(self.logits_store is None or not several_stores(self.logits_store),
                f"--logits-store {self.logits_store}: extract-eval reads one store (only distill reads several, "
                "comma-separated, as one): evaluate each store in its own run (a comma that is part of a path is "
                "written \\,)")
        require(self.suffix_len >= 1, "--suffix-len must be at least 1")
        require(self.offset >= 0, "--offset must be >= 0")
        require(self.batch_size >= 1, "--batch-size must be at least 1")
        require(self.method in METHODS, f"--method {self.method!r} is unknown: use {' | '.join(METHODS)}")
        require(self.backend in BACKENDS, f"--backend {self.backend!r} is unknown: use vllm | hf")
        require(self.match in MATCHES, f"--match {self.match!r} is unknown: use {' | '.join(MATCHES)}")
        require(self.match != "bytes" or self.method == "generate",
                f"--match bytes judges greedy decoding: use --method generate, not {self.method}")
        check_device(self.device)
        check_shard(self.num_workers, self.worker_index)
        if self.method == "store":
            require(self.logits_store is not None,
                    "--method store reads the teacher's verdicts from --logits-store STORE: pass it")
            require(self.offset == 0, "--method store needs --offset 0: the store's teacher saw every example from token 0")
            require(self.teacher_tokenizer is None and self.match == "auto",
                    "--method store reads the teacher's own verdicts (its tokens): drop --teacher-tokenizer / --match")
        else:
            require(self.model is not None, f"--method {self.method} needs --model MODEL_DIR")
        if self.features:
            require(self.logits_store is not None and self.method != "store",
                    "--features scores the model against the teacher's store: pass --model and --logits-store")
            require(self.num_workers == 1, "--features runs over every example: drop --num-workers "
                                           "(or run `kdstream features` once after `kdstream eval merge`)")

    @property
    def methods(self) -> list[str]:
        return METHODS[self.method]


def shard_range(total: int, num_workers: int, worker_index: int) -> tuple[int, int]:
    """Worker i's contiguous share [start, stop) of ``total`` examples (sizes differ by ≤ 1)."""
    return total * worker_index // num_workers, total * (worker_index + 1) // num_workers


def _tokenizer(model_dir: Path):
    from kdstream.text.tokenizers import has_tokenizer, load_tokenizer

    return load_tokenizer(model_dir) if has_tokenizer(model_dir) else None


def _load_examples(opts: ExtractOptions, tokenizer):
    """(input_ids (s, L), example_id (s,), (start, stop, total), store identity, examples'
    tokenizer) for this worker's share; the identity (the store's manifest hash) is None for
    --dataset; the examples' tokenizer is None when it is the model's (or unknown: a model without
    tokenizer files), else the tokenizer the examples were cut with (a cross-tokenizer run)."""
    from kdstream.text.match import fingerprint_sha, tokenizers_match
    from kdstream.text.tokenizers import load_tokenizer

    model_sha = fingerprint_sha(tokenizer)

    def differs(other) -> bool:
        return model_sha is not None and not tokenizers_match(other, model_sha)

    if opts.logits_store is not None:
        from kdstream.storage import open_stores
        from kdstream.storage.tokenizer_files import teacher_tokenizer

        store = open_stores(opts.logits_store)
        examples_tok = None
        missing = (f"the model's tokenizer differs from the store's and {store.url} carries no tokenizer (written "
                   "before stores carried one): pass --teacher-tokenizer DIR (the teacher's tokenizer) to "
                   "evaluate it across tokenizers, judged on bytes")
        if opts.teacher_tokenizer is not None:
            examples_tok = teacher_tokenizer(store, opts.teacher_tokenizer, missing)  # checked against the store
        elif differs(store):
            examples_tok = teacher_tokenizer(store, None, missing)  # the one the store carries
        total = len(store) if opts.max_examples is None else min(len(store), opts.max_examples)
        start, stop = shard_range(total, opts.num_workers, opts.worker_index)
        rows = store.read(start, stop, ("input_ids", "example_id"))
        return (rows["input_ids"], rows["example_id"], (start, stop, total), getattr(store, "identity", None),
                examples_tok if examples_tok is not None and differs(examples_tok) else None)
    from kdstream.data import load_corpus, pack_examples

    if tokenizer is None and opts.teacher_tokenizer is None:
        raise KdError(f"model {opts.model} has no tokenizer files: --dataset needs one to tokenize the text")
    packer = load_tokenizer(opts.teacher_tokenizer) if opts.teacher_tokenizer is not None else tokenizer
    ex = pack_examples(load_corpus(opts.dataset, opts.text_field, opts.split).texts, packer, opts.seq_len, opts.max_examples)
    start, stop = shard_range(len(ex.input_ids), opts.num_workers, opts.worker_index)
    return (ex.input_ids[start:stop], ex.example_id[start:stop], (start, stop, len(ex.input_ids)), None,
            packer if differs(packer) else None)


def _byte_judge(opts: ExtractOptions, tokenizer, examples_tok):
    """The byte-level judge (cross_tokenizer.ByteJudge) when the run is judged on bytes, else
    None; KdError for what a cross-tokenizer run cannot do. ``examples_tok``: see _load_examples."""
    from kdstream.extract.cross_tokenizer import ByteJudge

    if examples_tok is None:  # the model shares the examples' tokenizer
        if opts.match != "bytes":
            return None
        if tokenizer is None:
            raise KdError(f"--match bytes reads the model's tokenizer and {opts.model} has no tokenizer files: save "
                          "one there")
        return ByteJudge(tokenizer, tokenizer)
    if opts.match == "tokens":
        raise KdError("--match tokens needs the model to share the examples' tokenizer, and its tokenizer differs: "
                      "use --match auto (bytes)")
    if opts.method != "generate":
        raise KdError(f"--method {opts.method} compares token ids, and the model's tokenizer differs from the "
                      "examples': use --method generate (judged on the suffix's bytes)")
    if opts.features:
        raise KdError("--features scores the model on the store's tokens, and the model's tokenizer differs: drop "
                      "--features")
    return ByteJudge(examples_tok, tokenizer)


def _check_windows(opts: ExtractOptions, seq_len: int, model_dir: Path | None) -> int:
    """Context the engine needs: prefix + suffix, plus one with vLLM's fast path (prompt
    logprobs come with at least one generated token). KdError when a window does not fit."""
    longest = max(opts.prefix_len) + opts.suffix_len
    if opts.offset + longest > seq_len:
        raise KdError(
            f"--offset {opts.offset} + --prefix-len {max(opts.prefix_len)} + --suffix-len {opts.suffix_len} = "
            f"{opts.offset + longest} exceeds the example length {seq_len}: shorten them"
        )
    if model_dir is not None:
        from kdstream.model_files import model_config

        max_pos = model_config(model_dir).get("max_position_embeddings")
        if max_pos and longest > max_pos:
            raise KdError(f"prefix + suffix ({longest}) exceeds the model's context ({max_pos}): shorten them")
        if "fast" in opts.methods and opts.backend == "vllm":
            longest += 1
            if max_pos and longest > max_pos:
                raise KdError(f"vLLM's fast path needs prefix + suffix + 1 ({longest}) <= the model's context "
                              f"({max_pos}): shorten them by one or use --backend hf")
    return longest


def _batched(fn, rows: np.ndarray, n: int, batch_size: int, bar):
    """fn over row batches; concatenates each returned array (or tuple of arrays) along axis 0."""
    parts = []
    for b in range(0, len(rows), batch_size):
        out = fn(rows[b : b + batch_size], n)
        parts.append(out if isinstance(out, tuple) else (out,))
        if bar is not None:
            bar.update(len(rows[b : b + batch_size]))
    joined = tuple(np.concatenate(col) for col in zip(*parts))
    return joined if len(joined) > 1 else joined[0]


def generate_verdicts(backend, input_ids: np.ndarray, prefix_lens, n: int, offset: int, batch_size: int,
                      bar=None) -> dict[int, dict[str, np.ndarray]]:
    """{P: match_metrics + generated_ids} from greedy decoding, one engine pass per prefix length.

    input_ids (s, L); prefix P is input_ids[:, offset : offset+P], its suffix the next n tokens."""
    from kdstream.extract.metrics import match_metrics

    out = {}
    for p in prefix_lens:
        gen = _batched(backend.greedy, input_ids[:, offset : offset + p], n, batch_size, bar)  # (s, n)
        out[p] = {**match_metrics(gen, input_ids[:, offset + p : offset + p + n]), "generated_ids": gen}
    return out


def fast_verdicts(backend, input_ids: np.ndarray, prefix_lens, n: int, offset: int, batch_size: int,
                  bar=None) -> dict[int, dict[str, np.ndarray]]:
    """{P: teacher_forced_metrics} for every prefix length from ONE teacher-forced pass.

    The argmax predicting token offset+t sees tokens offset .. offset+t-1 whatever P is, so
    prefix P's verdict is a window of the same pass: it scores the suffix tokens from
    offset+min(P) to offset+max(P)+n-1 (span = max−min+n positions), then slices n per P.
    """
    from kdstream.extract.fast_path import teacher_forced_metrics

    lo, hi = min(prefix_lens), max(prefix_lens)
    argmax, gap = _batched(backend.score_suffix, input_ids[:, offset : offset + hi + n], hi - lo + n, batch_size, bar)
    out = {}
    for p in prefix_lens:
        window = slice(p - lo, p - lo + n)  # (s, span) → (s, n)
        out[p] = teacher_forced_metrics(argmax[:, window], gap[:, window], input_ids[:, offset + p : offset + p + n])
    return out


def byte_verdicts(backend, windows: dict, judge, batch_size: int, bar=None) -> dict[int, dict[str, object]]:
    """{P: byte_match_metrics + generated_ids, generated_bytes, suffix_bytes, skip_reason} from
    greedy decoding of each judged example's prompt for as many tokens as its suffix has bytes.

    windows: {P: cross_tokenizer.Windows}; judge: the ByteJudge that built them."""
    from kdstream.extract.metrics import byte_match_metrics

    out = {}
    for p, w in windows.items():
        S, todo = len(w.skip), w.judged
        gen: list = [None] * S
        for b in range(0, len(todo), batch_size):
            idx = todo[b : b + batch_size]
            for i, g in zip(idx.tolist(), backend.greedy_each([w.prompts[i] for i in idx], w.max_new(idx))):
                gen[i] = g
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.update(S - len(todo))
        got = [None if g is None else judge.model_text(g) for g in gen]
        out[p] = {**byte_match_metrics(got, w.suffix), "generated_ids": gen, "generated_bytes": got,
                  "suffix_bytes": w.suffix, "skip_reason": w.skip}
    return out


def _store_metrics(opts: ExtractOptions, start: int, stop: int, bar) -> dict[int, dict]:
    """{prefix_len: store_metrics} read block by block (the top-k arrays of a big store do not
    fit in memory at once)."""
    from kdstream.extract.fast_path import store_metrics
    from kdstream.storage import open_stores

    store = open_stores(opts.logits_store)
    keys = ("input_ids", "topk_ids", "topk_logprobs", "target_rank")
    block = max(store.chunk_rows, opts.batch_size)
    parts: dict[int, list[dict]] = {p: [] for p in opts.prefix_len}
    for b in range(start, stop, block):
        rows = store.read(b, min(stop, b + block), keys)
        for p in opts.prefix_len:
            parts[p].append(store_metrics(rows, opts.offset + p, opts.offset + p + opts.suffix_len))
            bar.update(len(rows["input_ids"]))
    return {p: {k: np.concatenate([m[k] for m in ms]) for k in ms[0]} for p, ms in parts.items()}


def run_extract_eval(opts: ExtractOptions, after: Callable[[Path], dict] | None = None) -> dict:
    """Write results.parquet, prefix_sweep.parquet (and disagreements.parquet with --method both)
    and summary.json under ``out`` (see extract/results.py); returns the summary.

    ``after(partial_dir)`` runs once the engine is freed and before anything is published: what it
    writes into ``partial_dir`` is published with the evaluation or not at all, and the dict it
    returns joins the summary. ``--features`` is such a step, composed by the caller
    (``analysis.features_run.features_after_extract``), so extraction imports no analysis."""
    from kdstream.extract.backends import make_backend
    from kdstream.extract.cross_tokenizer import CROSS, SAME
    from kdstream.extract.results import prefix_table, sweep_table, write_eval
    from kdstream.model_files import check_model_dir, check_tokenizer_fits
    from kdstream.progress import progress

    out = Path(opts.out)
    check_output(out, "extract-eval", replace=opts.overwrite)
    if opts.logits_store is not None:
        from kdstream.storage import open_stores

        store = open_stores(opts.logits_store)
        if store.conversations:  # prompts of their own lengths: extract/conversation_run.py
            from kdstream.extract.conversation_run import run_conversation_eval

            return run_conversation_eval(opts, store, after)
    require(opts.chat_template is None, "--chat-template renders a conversation store's prompts for a model of "
                                        "another tokenizer, and these examples are text windows: drop it")
    model_dir = check_model_dir(opts.model, "evaluated") if opts.method != "store" else None
    tokenizer = _tokenizer(model_dir) if model_dir else None
    if tokenizer is not None:
        check_tokenizer_fits(model_dir, "evaluated", tokenizer)
    input_ids, example_id, (start, stop, total), store_identity, examples_tok = _load_examples(opts, tokenizer)
    judge = _byte_judge(opts, tokenizer, examples_tok) if model_dir else None
    methods, n, o = opts.methods, opts.suffix_len, opts.offset
    longest = _check_windows(opts, input_ids.shape[1], model_dir if judge is None else None)
    windows = {}
    if judge is not None:  # the model's prompts and the suffixes' bytes, before the engine (its context)
        from kdstream.model_files import model_config

        context = model_config(model_dir).get("max_position_embeddings")
        windows = {p: judge.windows(input_ids[:, o : o + p], input_ids[:, o + p : o + p + n], context)
                   for p in opts.prefix_len}
        longest = max(w.longest() for w in windows.values())
    backend = make_backend(opts.backend, str(model_dir), longest, opts.engine, opts.device) if model_dir else None

    seconds = dict.fromkeys(methods, 0.0)
    per_prefix: dict[int, dict[str, dict]] = {p: {} for p in opts.prefix_len}
    # passes over the examples: generate and store once per prefix length, fast once for all
    passes = len(opts.prefix_len) * sum(m in methods for m in ("generate", "store")) + ("fast" in methods)
    with progress(len(input_ids) * passes, "extract", unit="seq") as bar:
        if "generate" in methods:
            t = time.perf_counter()
            verdicts = (byte_verdicts(backend, windows, judge, opts.batch_size, bar) if judge is not None else
                        generate_verdicts(backend, input_ids, opts.prefix_len, n, o, opts.batch_size, bar))
            for p, m in verdicts.items():
                per_prefix[p]["generate"] = m
            seconds["generate"] += time.perf_counter() - t
        if "fast" in methods:
            t = time.perf_counter()
            for p, m in fast_verdicts(backend, input_ids, opts.prefix_len, n, o, opts.batch_size, bar).items():
                per_prefix[p]["fast"] = m
            seconds["fast"] += time.perf_counter() - t
        if "store" in methods:
            t = time.perf_counter()
            for p, m in _store_metrics(opts, start, stop, bar).items():
                per_prefix[p]["store"] = m
            seconds["store"] += time.perf_counter() - t

    tables = {p: prefix_table(example_id, input_ids[:, o + p : o + p + n], ms) for p, ms in per_prefix.items()}
    primary = opts.prefix_len[0]
    meta = run_meta(opts, model_dir, backend.name if backend else "store", seconds, len(input_ids))
    meta.update(worker_index=opts.worker_index, num_workers=opts.num_workers, example_range=[start, stop],
                total_examples=total, store_identity=store_identity,
                mode=CROSS if examples_tok is not None else SAME, match_on="bytes" if judge is not None else "tokens")
    partial = fresh_partial(out, "extract-eval")
    save_options(opts, partial)
    if after is not None:
        del backend  # free the engine's memory before the step loads its own model
        meta.update(after(partial) or {})
    summary = write_eval(partial, tables[primary], sweep_table(tables), meta, methods)
    publish(partial, out, "extract-eval")
    return summary


def run_meta(opts: ExtractOptions, model_dir, backend: str, seconds: dict[str, float], examples: int) -> dict:
    """The summary's run facts (the counts come from results.summarize)."""
    per_method = {m: round(examples * len(opts.prefix_len) / s, 1) if s > 0 else None for m, s in seconds.items()}
    total_s = sum(seconds.values())
    return {
        "model": str(model_dir) if model_dir else None,
        "logits_store": opts.logits_store,
        "prefix_len": opts.prefix_len[0],
        "prefix_lens": list(opts.prefix_len),
        "suffix_len": opts.suffix_len,
        "offset": opts.offset,
        "method": opts.method,
        "backend": backend,
        "seconds": round(total_s, 3),
        "seconds_by_method": {m: round(s, 3) for m, s in seconds.items()},
        "sequences_per_s": round(examples * len(opts.prefix_len) / total_s, 1) if total_s > 0 else None,
        "sequences_per_s_by_method": per_method,
        "engine": options_dict(opts.engine),
    }
