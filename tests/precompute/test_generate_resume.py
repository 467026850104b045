"""precompute-logits --generate killed and resumed, and split over two workers then finalized:
both equal the uninterrupted store (the same responses, rows and counts)."""
from __future__ import annotations

import numpy as np
import pytest
from test_resume import kill_precompute

from chat_templates import generate_args
from helpers import last_json, run_cli
from kdstream.storage import open_store

pytestmark = pytest.mark.slow


def same_store(a_path, b_path) -> None:
    a, b = open_store(a_path), open_store(b_path)
    assert len(a) == len(b) and a.attrs["conversations"] == b.attrs["conversations"]
    for i in range(len(a)):
        x, y = a[i], b[i]
        for key in x:
            assert np.array_equal(x[key], y[key]), (i, key)


def test_a_killed_generate_resumes_to_the_uninterrupted_store(tmp_path, gen_store, chat_teacher_dir, prompt_file):
    out = tmp_path / "resumed.zarr"
    args = generate_args(chat_teacher_dir, prompt_file, out)
    kill_precompute(args, kill_at=2, mid=True)  # inside the third chunk's write: the second group's first
    summary = last_json(run_cli(*args).stdout)
    assert summary["complete"] and summary["chunks_resumed"] == 2
    assert summary["target_positions"] == gen_store[1]["target_positions"]
    same_store(gen_store[0], out)


def test_two_workers_then_finalize_equal_one_run(tmp_path, gen_store, chat_teacher_dir, prompt_file):
    out = tmp_path / "workers.zarr"
    for i in (1, 0):
        summary = last_json(run_cli(*generate_args(chat_teacher_dir, prompt_file, out, "--num-workers", 2,
                                                   "--worker-index", i)).stdout)
        assert not summary["complete"]
    run_cli("store", "finalize", out)
    same_store(gen_store[0], out)
    assert run_cli("store", "verify", out).returncode == 0
