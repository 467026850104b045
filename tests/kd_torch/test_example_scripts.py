"""examples/*.py run as users run them (subprocesses, torchrun for two processes) on the tiny
models; each leaves a checkpoint that transformers loads. Plus: two processes over StoreDataset
see every example exactly once per epoch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_gpt_neox, weight_gap
from kdstream.storage import open_store

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(*cmd, timeout=600):
    proc = subprocess.run([*map(str, cmd)], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tokenizer):
    return make_gpt_neox(tmp_path_factory.mktemp("example_student"), tokenizer, layers=1, seed=9)


@pytest.mark.slow
@pytest.mark.parametrize("script,launch", [
    ("plain_torch.py", "python"), ("plain_torch.py", "torchrun"), ("hf_trainer.py", "python"),
    ("hf_trainer.py", "torchrun"), ("trl_sft.py", "python"),
])
def test_each_example_trains_and_saves_a_loadable_student(script, launch, teacher_store, student_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    args = [ROOT / "examples" / script, "--logits-store", teacher_store, "--model", student_dir,
            "--out", tmp_path / "out", "--max-steps", 3, "--batch-size", 4]
    _run(*(_torchrun(*args) if launch == "torchrun" else [sys.executable, *args]))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert model.config.vocab_size == open_store(teacher_store).vocab_size
    assert weight_gap(tmp_path / "out", student_dir) > 0  # it trained


@pytest.mark.slow
def test_two_processes_see_every_example_once_per_epoch(teacher_store, tmp_path):
    _run(*_torchrun(ROOT / "tests" / "kd_torch" / "ddp_epoch.py", teacher_store, tmp_path / "seen.json"))
    per_rank = json.loads((tmp_path / "seen.json").read_text())
    assert len(per_rank) == 2 and all(per_rank)
    seen = [i for ids in per_rank for i in ids]
    store = open_store(teacher_store)
    assert sorted(seen) == sorted(store.read(0, len(store), ("example_id",))["example_id"].tolist())


@pytest.mark.slow
def test_the_plain_torch_example_trains_on_a_conversation_store(chat_store, chat_teacher_dir, tmp_path):
    _run(sys.executable, ROOT / "examples" / "plain_torch.py", "--logits-store", chat_store, "--model",
         chat_teacher_dir, "--out", tmp_path / "out", "--max-steps", 2, "--batch-size", 4)
    assert weight_gap(tmp_path / "out", chat_teacher_dir) > 0
