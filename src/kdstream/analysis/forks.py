"""Forks between near-duplicate training windows: why the CE baseline can miss a window that the
teacher and the student recite.

A teacher-only window (the teacher recites its suffix, the CE baseline does not) is *at a fork*
when the baseline's greedy decoding leaves the suffix where another training window shares the
text and goes on as that window does: the ``CONTEXT`` tokens before the departure, followed by the
(up to ``AHEAD``) tokens the baseline generated from it, occur together in another window. Two
license texts that share a phrase and then part (MIT's "BE LIABLE FOR ANY CLAIM" against BSD's
"BE LIABLE FOR ANY DIRECT") make such a fork: the baseline took the other branch; the teacher
resolved it from the earlier context, and a KD student learns that resolution from the teacher's
distributions. So a teacher-only window at a fork says the baseline fits that text but lost it at
a shared phrase, not that the teacher memorized something beyond the baseline's capacity (the
paper's teacher-only examples). The count lets a reader weigh the inherited share on their corpus.

CONTEXT is 4, not 8: near-duplicate texts share a phrase of a few tokens before they part.
The search covers every window of the store the models were evaluated on (its ``input_ids``), read
in chunks: 4-grams are hashed into uint64 so that one ``np.isin`` per chunk finds the candidate
positions, then each candidate is checked token for token (a hash collision cannot count).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTEXT = 4  # tokens of the window before the baseline's departure
AHEAD = 8  # tokens the baseline generated from the departure (fewer at the suffix's end)
MIN_AHEAD = 2  # a departure with fewer generated tokens is not tested: one token is no branch
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling hash (wraps mod 2^64)


@dataclass(frozen=True)
class Departure:
    """Where the baseline left one window's suffix: the window's ``context`` before that point and
    the tokens the baseline generated from it (``ahead``)."""

    example_id: int
    matched: int  # suffix tokens the baseline reproduced before it left
    context: tuple[int, ...]
    ahead: tuple[int, ...]


def departure(example_id: int, window: np.ndarray, start: int, matched: int, generated) -> Departure | None:
    """The baseline's departure in one window, or None when it cannot be tested.

    window (L,) the example's token ids; ``start`` the suffix's first position in it (offset +
    prefix length); ``matched`` the suffix tokens the baseline reproduced before its first miss;
    ``generated`` its greedy continuation of the prefix (suffix_len ids, fewer if it stopped)."""
    at = start + int(matched)  # the departure, as a position in the window
    ahead = tuple(int(t) for t in list(generated)[int(matched) : int(matched) + AHEAD])
    if at < CONTEXT or at > len(window) or len(ahead) < MIN_AHEAD:
        return None
    return Departure(int(example_id), int(matched), tuple(int(t) for t in window[at - CONTEXT : at]), ahead)


def _gram_hashes(ids: np.ndarray) -> np.ndarray:
    """(n, L) token ids -> (n, L - CONTEXT + 1) uint64 hashes of every CONTEXT-gram."""
    ids = ids.astype(np.uint64, copy=False)
    h = np.zeros((ids.shape[0], ids.shape[1] - CONTEXT + 1), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(CONTEXT):
            h = h * _MULT + ids[:, j : j + h.shape[1]]
    return h


def at_a_fork(departures: list[Departure], chunks) -> set[Departure]:
    """The departures whose context, followed by their ``ahead``, occurs in another window.

    ``chunks`` yields (example_ids (n,), input_ids (n, L)) over all training windows (the store in
    row chunks): one pass, whatever the number of departures."""
    if not departures:
        return set()
    by_hash: dict[int, list[Departure]] = {}
    for d in departures:
        key = int(_gram_hashes(np.asarray([d.context]))[0, 0])
        by_hash.setdefault(key, []).append(d)
    wanted = np.fromiter(by_hash, np.uint64, len(by_hash))
    found: set[Departure] = set()
    for example_ids, input_ids in chunks:
        input_ids = np.asarray(input_ids)
        if input_ids.shape[1] < CONTEXT:
            continue
        hashes = _gram_hashes(input_ids)
        for r, p in zip(*np.nonzero(np.isin(hashes, wanted))):
            row, after = input_ids[r], p + CONTEXT
            for d in by_hash[int(hashes[r, p])]:
                if (d not in found and int(example_ids[r]) != d.example_id
                        and tuple(int(t) for t in row[p:after]) == d.context
                        and tuple(int(t) for t in row[after : after + len(d.ahead)]) == d.ahead):
                    found.add(d)
    return found


def count_forks(departures: list[Departure], forked: set[Departure]) -> dict:
    """{"tested", "at_fork", "distinct_forks" (context + branch)} of a group of departures."""
    hit = [d for d in departures if d in forked]
    return {"tested": len(departures), "at_fork": len(hit), "distinct_forks": len({(d.context, d.ahead) for d in hit})}


def fork_counts(departures: list[Departure], forked: set[Departure], inherited: set[int]) -> dict:
    """The numbers ``compare`` records: ``count_forks`` of the teacher-only windows and of the ones
    the student inherited."""
    return {"teacher_only": count_forks(departures, forked),
            "inherited": count_forks([d for d in departures if d.example_id in inherited], forked),
            "context": CONTEXT, "ahead": AHEAD}


def store_chunks(store, desc: str, rows: int = 8192):
    """(example_ids (n,), input_ids (n, L)) of every row of ``store``, ``rows`` at a time (whole
    chunks), with a progress bar (a store of 1M windows takes a while)."""
    from kdstream.progress import progress

    step = max(1, rows // store.chunk_rows) * store.chunk_rows
    with progress(len(store), desc, unit="window") as bar:
        for a in range(0, len(store), step):
            got = store.read(a, min(a + step, len(store)), ("input_ids", "example_id"))
            yield got["example_id"], got["input_ids"]
            bar.update(len(got["example_id"]))


def baseline_departures(baseline_eval, ids: set[int]) -> tuple[list[Departure], object] | str:
    """(the baseline's testable departures in the windows ``ids``, the store it evaluated), from
    its extract-eval directory; or why the test does not apply: the baseline was not judged by
    greedy decoding on the store's own tokens, or its store is gone or was rewritten since."""
    import pyarrow.parquet as pq

    from kdstream.analysis.files import eval_results, eval_summary
    from kdstream.errors import KdError
    from kdstream.storage import open_stores

    summary = eval_summary(baseline_eval, "baseline")
    method = summary.get("verdict_method")
    if method != "generate":
        return f"the baseline's verdicts came from {method or 'an unrecorded method'}, not greedy decoding: no generated branch"
    if summary.get("match_on", "tokens") != "tokens":
        return "the baseline has another tokenizer than the store's windows"
    if not summary.get("logits_store"):
        return "the baseline was evaluated on a dataset, not a store: no training windows to search"
    if summary.get("prefix") == "conversation":
        return "the evaluations are of conversations, not of windows cut from one text: no near-duplicate windows"
    try:
        store = open_stores(summary["logits_store"], identity=summary.get("store_identity"))
    except KdError as exc:
        return str(exc)
    table = pq.read_table(eval_results(baseline_eval, "baseline"),
                          columns=["example_id", "generate_prefix_match_len", "generated_ids"]).to_pandas()
    table = table[table["example_id"].isin(list(ids))].set_index("example_id").sort_index()
    windows: dict[int, np.ndarray] = {}
    wanted = table.index.to_numpy()
    for example_ids, input_ids in store_chunks(store, "forks: departures") if len(table) else ():
        for r in np.nonzero(np.isin(example_ids, wanted))[0]:  # the rows of these windows only
            windows[int(example_ids[r])] = np.asarray(input_ids[r])
    start = int(summary.get("offset") or 0) + int(summary["prefix_len"])  # the suffix's first position
    departures = []
    for e, r in table.iterrows():
        matched, generated = r["generate_prefix_match_len"], r["generated_ids"]
        if int(e) in windows and generated is not None and not np.isnan(matched):
            d = departure(int(e), windows[int(e)], start, int(matched), generated)
            if d is not None:
                departures.append(d)
    return departures, store


def teacher_only_forks(baseline_eval, teacher_only: set[int], inherited: set[int]) -> dict:
    """``fork_counts`` of the teacher-only windows (``inherited``: those the student recites), or
    ``{"skipped": why}`` (``baseline_departures``)."""
    got = baseline_departures(baseline_eval, teacher_only)
    if isinstance(got, str):
        return {"skipped": got}
    departures, store = got
    return fork_counts(departures, at_a_fork(departures, store_chunks(store, "forks: other windows")), inherited)
