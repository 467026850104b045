"""distill --logits-store a.zarr,b.zarr: several stores from one teacher trained on as one
(storage/union.py), end to end through the CLI, resumed, and refused when a part is missing."""
import json
import pickle

import pytest
from test_trainer import kill_after_checkpoint

from helpers import last_json, losses, run_cli
from kdstream.distill.loader import OpenStore
from kdstream.storage import open_store, open_stores

pytestmark = pytest.mark.slow


def test_distill_trains_on_two_stores_as_one_and_resumes(tmp_path, teacher_store, second_store, student_init_dir):
    union = open_stores([str(teacher_store), str(second_store)])
    assert len(union) == 32
    # union id 24 is the second store's first example (its own id 0, shifted by the first's 24 ids)
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("24\n")
    args = ["distill", "--logits-store", f"{teacher_store},{second_store}", "--model", student_init_dir,
            "--epochs", 1, "--batch-size", 16, "--lr", "1e-3", "--exclude", exclude]
    summary = last_json(run_cli(*args, "--out", tmp_path / "straight").stdout)
    assert summary["steps"] == 2 and summary["examples"] == 31
    written = json.loads((tmp_path / "straight" / "train_summary.json").read_text())
    assert written["store_identity"] == union.identity != open_store(str(teacher_store)).identity

    # interrupted after step 1, resumed (its loader in a worker process: the union reopened there)
    out = kill_after_checkpoint([*args, "--checkpoint-every", 1], tmp_path / "killed", 1)
    resumed = last_json(run_cli(*args, "--out", out, "--resume", "--loader-workers", 1).stdout)
    assert resumed["resumed_from_step"] == 1 and resumed["store_identity"] == union.identity
    assert losses(out) == losses(tmp_path / "straight")


def test_resume_with_the_parts_in_another_order_is_refused(tmp_path, teacher_store, second_store, student_init_dir,
                                                           error_line):
    common = ["--model", student_init_dir, "--epochs", 1, "--batch-size", 16, "--checkpoint-every", 1]
    out = kill_after_checkpoint(["distill", "--logits-store", f"{teacher_store},{second_store}", *common],
                                tmp_path / "run", 1)
    proc = run_cli("distill", "--logits-store", f"{second_store},{teacher_store}", *common, "--out", out, "--resume",
                   check=False)
    line = error_line(proc)
    assert "--resume: the checkpoint was made from another store" in line, line


def test_a_missing_part_is_one_line(tmp_path, teacher_store, student_init_dir, error_line):
    missing = tmp_path / "missing.zarr"
    proc = run_cli("distill", "--logits-store", f"{teacher_store},{missing}", "--model", student_init_dir,
                   "--out", tmp_path / "out", check=False)
    assert f"no logit store at {missing}" in error_line(proc)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_open_store_reopens_a_union_after_pickling(teacher_store, second_store):
    union = open_stores(f"{teacher_store},{second_store}")
    reopen = pickle.loads(pickle.dumps(OpenStore.of(union)))
    again = reopen()
    assert again.identity == union.identity and len(again) == len(union)
    assert reopen.part_identities == union.part_identities
    single = OpenStore.of(open_store(str(teacher_store)))
    assert single.part_identities is None and single().identity == open_store(str(teacher_store)).identity
