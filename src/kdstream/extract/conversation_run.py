"""extract-eval on a conversation store: each conversation's first assistant answer, from its
prompt (extract/conversation_prompts.py), judged on tokens by the same methods and tables as a
text store's windows; a model of another tokenizer, on bytes from its own rendering of the prompt
(extract/conversation_cross.py).

The prompts differ in length, the suffixes do not (n tokens each), so the verdict tables keep
their (examples, n) shape: results.parquet gains ``prompt_len`` (the prefix's tokens, per row),
the sweep's ``prefix_len`` is null (no fixed prefix length), and summary.json names
``prefix: "conversation"`` with the skipped conversations counted under ``conversations``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kdstream.errors import KdError
from kdstream.extract.conversation_prompts import (
    check_conversation_store,
    first_turns,
    score_each,
    store_windows,
)
from kdstream.options import require, save_options
from kdstream.outputs import fresh_partial, publish


def check_conversation_options(opts, url: str) -> None:
    """One-line errors for what a conversation evaluation does not do (--prefix-len: only its
    default, which a run that did not name the flag carries)."""
    default = type(opts).__dataclass_fields__["prefix_len"].default
    require(tuple(opts.prefix_len) == tuple(default) and opts.offset == 0,
            f"store {url} holds conversations: the prefix is each conversation up to its first assistant turn, so "
            "--prefix-len and --offset do not apply: drop them")


def _cross_judge(opts, model_dir: Path, store, url: str):
    """(ByteJudge, the model's chat template) when the model's tokenizer differs from the store's
    (extract/conversation_cross.py), else None; KdError for flags that only such a run takes."""
    from kdstream.extract.conversation_cross import cross_judge
    from kdstream.extract.run import _tokenizer
    from kdstream.model_files import check_tokenizer_fits
    from kdstream.text.match import tokenizers_match

    tokenizer = _tokenizer(model_dir)
    if tokenizer is not None:
        check_tokenizer_fits(model_dir, "evaluated", tokenizer)
    if tokenizer is None or tokenizers_match(tokenizer, store):
        require(opts.match != "bytes" and opts.teacher_tokenizer is None and opts.chat_template is None,
                f"store {url} holds conversations and the model shares its tokenizer: they are judged on the "
                "store's tokens, so drop --match bytes / --teacher-tokenizer / --chat-template")
        return None
    return cross_judge(opts, tokenizer, store, url)


def _check_context(model_dir: Path, longest: int) -> None:
    from kdstream.model_files import model_config

    max_pos = model_config(model_dir).get("max_position_embeddings")
    if max_pos and longest > max_pos:
        raise KdError(f"the longest prompt + --suffix-len is {longest} tokens, beyond the model's context ({max_pos}): "
                      "lower --suffix-len, or evaluate a model with a longer context")


def run_conversation_eval(opts, store, after: Callable[[Path], dict] | None = None) -> dict:
    """``run_extract_eval`` for a conversation store (already opened): same files, same methods."""
    from kdstream.extract.backends import make_backend
    from kdstream.extract.cross_tokenizer import CROSS, SAME
    from kdstream.extract.fast_path import teacher_forced_metrics
    from kdstream.extract.metrics import match_metrics
    from kdstream.extract.results import prefix_table, write_eval
    from kdstream.extract.run import byte_verdicts, run_meta, shard_range
    from kdstream.model_files import check_model_dir
    from kdstream.progress import progress
    from kdstream.storage.schema import EXAMPLE_LENGTH, LENGTH_ARRAY

    url = opts.logits_store
    check_conversation_store(store, url)
    check_conversation_options(opts, url)
    n, methods = opts.suffix_len, opts.methods
    model_dir = check_model_dir(opts.model, "evaluated") if opts.method != "store" else None
    require(model_dir is not None or opts.chat_template is None,
            "--chat-template is the evaluated model's: --method store evaluates no model, drop it")
    cross = _cross_judge(opts, model_dir, store, url) if model_dir is not None else None
    total = len(store) if opts.max_examples is None else min(len(store), opts.max_examples)
    start, stop = shard_range(total, opts.num_workers, opts.worker_index)
    rows = store.read(start, stop, ("input_ids", "example_id", EXAMPLE_LENGTH, LENGTH_ARRAY, "doc_index"))
    turns = first_turns(rows, n)
    if len(turns) == 0:
        raise KdError(f"no conversation of store {url} (examples {start}..{stop - 1}) has a first assistant turn of "
                      f"--suffix-len {n} tokens or more: lower --suffix-len")
    windows = None
    if cross is not None:  # the model's own rendering of each prompt, and the answers' bytes
        from kdstream.distill.cross_conversations import stored_messages
        from kdstream.extract.conversation_cross import cross_windows
        from kdstream.model_files import model_config

        windows = cross_windows(*cross, stored_messages(store), store.generated, rows, turns, n,
                                model_config(model_dir).get("max_position_embeddings"))
        longest = windows.longest()
    else:
        longest = turns.longest(n) + ("fast" in methods and opts.backend == "vllm")
        if model_dir is not None:
            _check_context(model_dir, longest)
    backend = make_backend(opts.backend, str(model_dir), longest, opts.engine, opts.device) if model_dir else None

    seconds = dict.fromkeys(methods, 0.0)
    per_method: dict[str, dict] = {}
    with progress(len(turns) * len(methods), "extract", unit="seq") as bar:
        if "generate" in methods and windows is not None:
            t = time.perf_counter()
            per_method["generate"] = byte_verdicts(backend, {None: windows}, cross[0], opts.batch_size, bar)[None]
            seconds["generate"] += time.perf_counter() - t
        elif "generate" in methods:
            t = time.perf_counter()
            gen = []
            for b in range(0, len(turns), opts.batch_size):
                prompts = turns.prompts[b : b + opts.batch_size]
                gen += backend.greedy_each(prompts, np.full(len(prompts), n, np.int64))
                bar.update(len(prompts))
            gen = np.stack(gen).astype(np.int64)  # (c, n)
            per_method["generate"] = {**match_metrics(gen, turns.suffix), "generated_ids": gen}
            seconds["generate"] += time.perf_counter() - t
        if "fast" in methods:
            t = time.perf_counter()
            argmax, gap = score_each(backend, turns.windows(n), n, opts.batch_size)
            per_method["fast"] = teacher_forced_metrics(argmax, gap, turns.suffix)
            bar.update(len(turns))
            seconds["fast"] += time.perf_counter() - t
        if "store" in methods:
            t = time.perf_counter()
            per_method["store"] = _store_verdicts(store, turns, start, stop, n, max(store.chunk_rows, opts.batch_size))
            bar.update(len(turns))
            seconds["store"] += time.perf_counter() - t

    table = prefix_table(turns.example_id, turns.suffix, per_method)
    table = table.add_column(1, "prompt_len", _arrow(turns.prompt_len))
    sweep = conversation_sweep(table)
    skipped = dict(turns.skipped)
    if windows is not None:  # judged on bytes: what the model's rendering could not judge, counted here too
        for reason in filter(None, windows.skip):
            skipped[reason] = skipped.get(reason, 0) + 1
    meta = run_meta(opts, model_dir, backend.name if backend else "store", seconds, len(turns))
    meta.update(prefix="conversation", prefix_len=None, prefix_lens=[None], offset=None,
                worker_index=opts.worker_index, num_workers=opts.num_workers, example_range=[start, stop],
                total_examples=total, store_identity=getattr(store, "identity", None),
                mode=SAME if windows is None else CROSS, match_on="tokens" if windows is None else "bytes",
                conversations={"read": stop - start, "judged": stop - start - sum(skipped.values()),
                               "skipped": skipped})
    partial = fresh_partial(Path(opts.out), "extract-eval")
    save_options(opts, partial)
    if after is not None:
        del backend  # free the engine's memory before the step loads its own model
        meta.update(after(partial) or {})
    summary = write_eval(partial, table, sweep, meta, methods)
    publish(partial, Path(opts.out), "extract-eval")
    return summary


def _store_verdicts(store, turns, start: int, stop: int, n: int, block: int) -> dict[str, np.ndarray]:
    """fast_path.store_metrics of the judged suffixes, read ``block`` rows at a time (a big store's
    top-k arrays do not fit in memory at once)."""
    from kdstream.extract.fast_path import store_metrics

    parts = []
    for b in range(start, stop, block):
        rows = store.read(b, min(stop, b + block), ("input_ids", "topk_ids", "topk_logprobs", "target_rank"))
        mine = (turns.row >= b - start) & (turns.row < b - start + block)
        windows = store_windows(rows, turns.row[mine] - (b - start), turns.prompt_len[mine], n)
        parts.append(store_metrics(windows, 1, n + 1))
    return {k: np.concatenate([m[k] for m in parts]) for k in parts[0]}


def _arrow(values: np.ndarray):
    import pyarrow as pa

    return pa.array(np.asarray(values, np.int64))


def conversation_sweep(table):
    """The results without the id lists, with a null prefix_len (no fixed prefix length): what
    prefix_sweep.parquet holds for a conversation evaluation."""
    import pyarrow as pa

    from kdstream.extract.results import LIST_COLUMNS

    t = table.drop_columns([c for c in LIST_COLUMNS if c in table.column_names])
    return t.add_column(1, "prefix_len", pa.nulls(t.num_rows, pa.int64()))


def merged_counts(parts: list[dict]) -> dict:
    """The ``conversations`` counts of several shards' summaries, summed."""
    skipped: dict[str, int] = {}
    for c in parts:
        for k, v in c["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    return {"read": sum(c["read"] for c in parts), "judged": sum(c["judged"] for c in parts), "skipped": skipped}
