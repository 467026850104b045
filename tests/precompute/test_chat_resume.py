"""A conversation store's precompute, killed and resumed, equals an uninterrupted run."""
from __future__ import annotations

import numpy as np
import pytest
from test_resume import kill_precompute

from chat_templates import chat_precompute_args
from helpers import last_json, run_cli
from kdstream.storage import open_store

pytestmark = pytest.mark.slow


def test_a_killed_chat_precompute_resumes_to_the_uninterrupted_store(tmp_path, chat_store, chat_teacher_dir, chat_file):
    out = tmp_path / "resumed.zarr"
    args = chat_precompute_args(chat_teacher_dir, chat_file, out, "--logprob-encoding", "fp32")
    kill_precompute(args, kill_at=2, mid=True)  # inside the third chunk's write
    summary = last_json(run_cli(*args).stdout)
    assert summary["complete"] and summary["chunks_resumed"] == 2
    a, b = open_store(chat_store), open_store(out)
    for i in range(len(a)):
        x, y = a[i], b[i]
        for key in x:
            assert np.array_equal(x[key], y[key]), (i, key)

