"""examples/hf_trainer.py --resume against another store than its checkpoints read: one line,
exit 2, no traceback, the checkpoints untouched (the check is KDTrainer's; the script ends as the
CLI does)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import make_gpt_neox, one_line_error, precompute_args, run_cli

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _example(store, student, out, *extra) -> subprocess.CompletedProcess:
    args = [ROOT / "examples" / "hf_trainer.py", "--logits-store", store, "--model", student, "--out", out,
            "--batch-size", 4, "--save-steps", 1, *extra]
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600, env=ENV,
                          cwd=ROOT)


def test_hf_trainer_resume_against_another_store_is_one_line(tmp_path, second_store, teacher_dir, corpus_file,
                                                            tokenizer, digest):
    student = make_gpt_neox(tmp_path / "student", tokenizer, layers=1, seed=9)
    other = tmp_path / "other.zarr"  # the same teacher over other examples
    run_cli(*precompute_args(teacher_dir, corpus_file, other, "--max-examples", 12, "--backend", "hf"))
    out = tmp_path / "run"
    first = _example(second_store, student, out, "--max-steps", 1)
    assert first.returncode == 0, first.stderr[-3000:]
    before = digest(out)
    line = one_line_error(_example(other, student, out, "--max-steps", 2, "--resume"))
    assert f"trained on store {second_store}" in line and f"not {other}" in line, line
    assert "resume with the store it started with" in line
    assert digest(out) == before
