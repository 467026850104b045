"""analysis/forks.py: a baseline's departure counts as a fork only when another training window
goes on as the baseline did after the same few tokens; `compare` records the counts from a real
store and a baseline evaluation written by extract-eval's own writer."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from analysis_dirs import write_eval

from kdstream.analysis.compare_run import compare_evals, format_comparison
from kdstream.analysis.forks import CONTEXT, Departure, at_a_fork, departure

SHARED = tuple(range(100, 100 + CONTEXT))  # a phrase two texts share before they part


def _chunks(windows: dict[int, tuple[int, ...]], rows: int):
    ids = sorted(windows)
    for a in range(0, len(ids), rows):
        part = ids[a:a + rows]
        yield np.asarray(part), np.asarray([windows[i] for i in part])


@pytest.mark.parametrize("rows", [1, 2, 3])  # the windows read in chunks of any size
def test_a_fork_needs_another_window_with_the_same_context_and_continuation(rows):
    windows = {0: (1, 2, *SHARED, 7, 8, 9), 1: (3, 0, *SHARED, 5, 6, 4), 2: (1, 2, *SHARED, 7, 8, 9)}
    took_other = Departure(1, 0, SHARED, (7, 8))  # window 1's baseline took windows 0/2's branch
    nowhere = Departure(1, 0, SHARED, (7, 5))  # a continuation no window has
    duplicate = Departure(0, 0, SHARED, (7, 8, 9))  # window 2 is window 0's copy
    past_end = Departure(0, 0, SHARED, (5, 6, 4, 0))  # runs past window 1's end
    got = at_a_fork([took_other, nowhere, duplicate, past_end], _chunks(windows, rows))
    assert got == {took_other, duplicate}
    del windows[2]
    assert at_a_fork([duplicate], _chunks(windows, rows)) == set()  # only itself: not a fork


def test_departure_positions_and_untestable_cases():
    window = np.arange(20)
    d = departure(7, window, start=8, matched=3, generated=[11, 12, 13, 90, 91, 92])
    assert d == Departure(7, 3, (7, 8, 9, 10), (90, 91, 92))  # context: the 4 tokens before position 11
    assert departure(7, window, start=8, matched=5, generated=[11, 12, 13, 14, 15, 90]) is None  # 1 token: no branch
    assert departure(7, window, start=2, matched=1, generated=[3, 50, 51]) is None  # fewer than 4 tokens before


SEQ, PREFIX, SUFFIX = 16, 6, 10


def _store(path, windows: np.ndarray) -> str:
    from kdstream.storage import StoreWriter

    n, vocab, k = len(windows), 128, 2
    w = StoreWriter(str(path), num_examples=n, seq_len=SEQ, k=k, vocab_size=vocab, chunk_rows=2, attrs={})
    rng = np.random.default_rng(0)
    top = np.stack([rng.choice(vocab, (SEQ - 1, k), replace=False) for _ in range(n)])
    w.append({"input_ids": windows, "example_id": np.arange(n), "doc_index": np.arange(n),
              "topk_ids": top, "topk_logprobs": np.log(np.full((n, SEQ - 1, k), 0.4, np.float32)),
              "target_logprob": np.full((n, SEQ - 1), -1.0, np.float32),
              "target_rank": np.ones((n, SEQ - 1), np.int64)})
    w.finalize()
    return str(path)


def _baseline_eval(d, store: str, windows: np.ndarray, generated: np.ndarray) -> None:
    """An extract-eval directory as extract-eval's writer leaves it (generate verdicts)."""
    from kdstream.extract.metrics import match_metrics
    from kdstream.extract.results import prefix_table, sweep_table
    from kdstream.extract.results import write_eval as write_results
    from kdstream.storage import open_store

    d.mkdir()
    ids = np.arange(len(windows))
    truth = windows[:, PREFIX:PREFIX + SUFFIX]
    table = prefix_table(ids, truth, {"generate": {**match_metrics(generated, truth), "generated_ids": generated}})
    meta = {"logits_store": store, "store_identity": open_store(store).identity, "prefix_len": PREFIX,
            "suffix_len": SUFFIX, "offset": 0, "match_on": "tokens"}
    write_results(d, table, sweep_table({PREFIX: table}), meta, ["generate"])


def test_compare_counts_the_teacher_only_windows_lost_at_a_fork(tmp_path):
    rng = np.random.default_rng(1)
    windows = rng.integers(1, 60, (6, SEQ))  # random text below 100: the phrase occurs only where placed
    mit, bsd = (20, 21, 22, 23), (30, 31, 32, 33)
    windows[0, 6:] = (7, 8, *SHARED, *mit)  # suffix: the shared phrase, then MIT's branch
    windows[1, 6:] = (9, 10, *SHARED, *bsd)  # the other license: same phrase, BSD's branch
    windows[2, 6:] = (11, 12, *SHARED, *mit)
    store = _store(tmp_path / "s.zarr", windows)
    generated = windows[:, PREFIX:].copy()  # the baseline recites every suffix ...
    generated[0, 6:] = bsd  # ... but window 0's: after the phrase it goes on as window 1 does
    generated[2, 6:] = (50, 51, 52, 53)  # window 2's: a branch no window has
    generated[3, 2:] = (55, 56, 57, 58, 59, 54, 53, 52)  # window 3's: leaves it early, onto nothing
    _baseline_eval(tmp_path / "b", store, windows, generated)
    ids = range(6)
    teacher = write_eval(tmp_path / "t", ids, {0, 2, 3, 4})
    student = write_eval(tmp_path / "s", ids, {0, 4})
    cmp = compare_evals(teacher, tmp_path / "b", student)
    assert cmp["teacher_only"] == 3 and cmp["teacher_only_inherited_by_student"] == 1  # {0, 2, 3}; 0
    assert cmp["forks"]["teacher_only"] == {"tested": 3, "at_fork": 1, "distinct_forks": 1}
    assert cmp["forks"]["inherited"] == {"tested": 1, "at_fork": 1, "distinct_forks": 1}
    assert "1 of 3 tested, behind 1 distinct forks" in format_comparison(cmp)

    # the store gone: not tested, said so, the rest of the comparison unchanged
    shutil.rmtree(tmp_path / "s.zarr")
    gone = compare_evals(teacher, tmp_path / "b", student)
    assert "no logit store" in gone["forks"]["skipped"] and gone["teacher_only"] == 3
    assert "not tested (no logit store" in format_comparison(gone)
    # rewritten in place (another store at the same path): not read as the one evaluated
    _store(tmp_path / "s.zarr", windows[::-1].copy())
    assert "not the store this run started with" in compare_evals(teacher, tmp_path / "b", student)["forks"]["skipped"]
    # judged by teacher forcing: nothing generated to follow
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    (tmp_path / "b" / "summary.json").write_text(json.dumps({**summary, "verdict_method": "fast"}))
    assert "came from fast, not greedy decoding" in compare_evals(teacher, tmp_path / "b", student)["forks"]["skipped"]
