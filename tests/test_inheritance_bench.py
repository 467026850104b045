"""benchmarks/inheritance_bench: a baseline's departure counts as a fork only when another window
goes on as the baseline did after the same few tokens."""
from __future__ import annotations

from benchmarks.inheritance_bench import CONTEXT, _index, _sibling


def test_sibling_needs_another_window_with_the_same_context_and_continuation():
    shared = tuple(range(100, 100 + CONTEXT))  # a phrase two texts share before they part
    windows = {0: (1, 2, *shared, 7, 8, 9), 1: (3, *shared, 5, 6, 4), 2: (1, 2, *shared, 7, 8, 9)}
    index = _index(windows)
    assert _sibling(1, shared, (7, 8), windows, index)  # window 1's baseline took windows 0/2's branch
    assert not _sibling(1, shared, (7, 5), windows, index)  # a continuation no window has
    assert _sibling(0, shared, (7, 8, 9), windows, index)  # window 2 is its duplicate
    assert not _sibling(0, shared, (5, 6, 4, 0), windows, index)  # runs past window 1's end
    del windows[2]
    assert not _sibling(0, shared, (7, 8), windows, _index(windows))  # only itself: not a fork
