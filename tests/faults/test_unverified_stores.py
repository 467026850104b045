"""Stores without an identity (format version 3: no integrity record): a resume compares their
content (a digest of the chunks, cached per user), not their path, in `distill --resume` and in
the Hugging Face Trainer's resume; `store info` says they are unverified."""
import json
import shutil
import signal
from pathlib import Path

import pytest
import zarr
from test_distill_faults import distill_args, launch

from helpers import as_version_3, make_gpt_neox, run_cli
from kdstream.errors import KdError


@pytest.fixture
def v3_store(teacher_store, tmp_path, monkeypatch) -> Path:
    """A copy of the session store as a version 3 writer left it (no integrity record)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the digest cache: ours
    path = Path(shutil.copytree(teacher_store, tmp_path / "a" / "teacher.zarr"))
    as_version_3(path)
    return path


def rewrite_one_token(store: Path) -> None:
    """Another store at the same path: one input token changed (the same rows, shapes and attributes)."""
    arr = zarr.open_group(str(store), mode="r+")["input_ids"].with_config({"write_empty_chunks": True})
    data = arr[...]
    data[0, 3] = (int(data[0, 3]) + 1) % 512
    arr[...] = data


def test_store_info_says_a_version_3_store_is_unverified(v3_store):
    info = run_cli("store", "info", v3_store)
    assert "identity: none (unverified: format version 3 carries no integrity record" in info.stdout, info.stdout


@pytest.mark.slow
def test_distill_resume_compares_a_version_3_store_by_content(v3_store, student_init_dir, tmp_path, digest,
                                                              error_line):
    """Issue 36 case 2: another store at the same path resumed with exit 0 (only the path was compared)."""
    out = tmp_path / "run"
    proc = launch(distill_args(v3_store, student_init_dir, out), KILL_AT_CHECKPOINT=2)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    original = shutil.copytree(v3_store, tmp_path / "b" / "teacher.zarr")  # the same store at another path
    rewrite_one_token(v3_store)
    before = digest(tmp_path / "run.partial")
    line = error_line(run_cli(*distill_args(v3_store, student_init_dir, out, "--resume"), check=False))
    assert "--resume: the checkpoint was made from another store (content digest" in line, line
    assert digest(tmp_path / "run.partial") == before and not out.exists()
    resumed = run_cli(*distill_args(original, student_init_dir, out, "--resume"))
    assert "resuming from" in resumed.stderr and (out / "train_summary.json").is_file()


@pytest.mark.slow
def test_hf_trainer_resume_compares_a_version_3_store_by_content(v3_store, tokenizer, tmp_path):
    """Issue 36 case 2, kdstream.torch: the Trainer's resume compared identities, None for both."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from kdstream.torch import KDTrainer, StoreDataset

    student = make_gpt_neox(tmp_path / "student", tokenizer, layers=1, seed=5)

    def trainer(steps: int) -> KDTrainer:
        args = TrainingArguments(output_dir=str(tmp_path / "out"), remove_unused_columns=False, report_to=[],
                                 use_cpu=True, seed=0, per_device_train_batch_size=4, learning_rate=1e-3,
                                 dataloader_num_workers=0, save_strategy="steps", save_steps=2, max_steps=steps)
        model = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32)
        return KDTrainer(model=model, args=args, train_dataset=StoreDataset(v3_store), processing_class=tokenizer)

    trainer(2).train()
    record = json.loads((tmp_path / "out" / "checkpoint-2" / "kdstream_store.json").read_text())
    assert record["identity"].startswith("content-sha256:") and len(record["identity"]) == 15 + 64
    rewrite_one_token(v3_store)
    with pytest.raises(KdError, match="checkpoint .* trained on store .*resume with the store it started with"):
        trainer(4).train(resume_from_checkpoint=True)
    assert not (tmp_path / "out" / "checkpoint-4").exists()
    # computed once per content, cached as JSON by the store's URL
    cache = json.loads((tmp_path / "cache" / "kdstream" / "store_digests.json").read_text())
    assert list(cache) == [f"file://{v3_store}"] and cache[f"file://{v3_store}"]["sha256"] != record["identity"][15:]
