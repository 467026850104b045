"""Messages that misled: an owner mark whose heartbeat lies in the future (it never expired, and
the refusal did not name the file), `--eval-every 0`, `--num-workers 0`, and a comma inside a
store path (commas separate stores; `\\,` is a comma that is part of a path). Each runs the real
command: one line, exit 2, or the run it should allow."""
from __future__ import annotations

import json
import shutil
import time

from helpers import precompute_args, run_cli

STORE_EVAL = ("--method", "store", "--prefix-len", 16, "--suffix-len", 16)


def _plant(store, name: str, heartbeat: float) -> str:
    """A mark of a run on another host, as another kdstream would write it."""
    owners = store / "chunk_done" / "owners"
    owners.mkdir(parents=True, exist_ok=True)
    (owners / name).write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "other", "worker_index": 1,
                                           "num_workers": 2, "started": heartbeat, "heartbeat": heartbeat}))
    return str(owners / name)


def test_an_owner_mark_from_the_future_is_named_and_expires(tmp_path, teacher_dir, corpus_file, error_line):
    store = tmp_path / "s.zarr"
    args = precompute_args(teacher_dir, corpus_file, store, "--max-examples", 12, "--chunk-rows", 3, "--batch-size", 3,
                           "--backend", "hf", "--num-workers", 2)
    run_cli(*args, "--worker-index", 0)  # worker 1's share is left to write
    # a little ahead (clocks that disagree by a minute): a live run's, refused, naming its file
    mark = _plant(store, "1-of-2.json", time.time() + 60)
    line = error_line(run_cli(*args, "--worker-index", 1, check=False))
    assert "another precompute-logits is writing" in line and "s in the future" in line and mark in line, line
    # a day ahead: no live run's mark; taken over with a warning naming it, and the share is written
    _plant(store, "1-of-2.json", time.time() + 86400)
    proc = run_cli(*args, "--worker-index", 1)
    assert f"warning: taking over {mark}: its heartbeat is" in proc.stderr, proc.stderr[-2000:]
    run_cli("store", "finalize", store)
    assert json.loads((store / "zarr.json").read_text())["attributes"]["complete"] is True


def test_overwrite_is_not_blocked_forever_by_a_mark_from_the_future(tmp_path, second_store, teacher_dir,
                                                                    corpus_file):
    store = shutil.copytree(second_store, tmp_path / "s.zarr")
    _plant(store, "1-of-2.json", time.time() + 86400)
    run_cli(*precompute_args(teacher_dir, corpus_file, store, "--max-examples", 8, "--backend", "hf"), "--overwrite")


def test_eval_every_zero_and_num_workers_zero_say_what_is_wrong(tmp_path, second_store, student_init_dir,
                                                               teacher_dir, corpus_file, error_line):
    line = error_line(run_cli("distill", "--logits-store", second_store, "--model", student_init_dir, "--out",
                              tmp_path / "d", "--eval-examples", 4, "--eval-every", 0, check=False))
    assert "--eval-every 0 must be at least 1" in line, line
    for args in (precompute_args(teacher_dir, corpus_file, tmp_path / "s.zarr", "--backend", "hf"),
                 ["extract-eval", "--logits-store", second_store, *STORE_EVAL, "--out", tmp_path / "e"]):
        line = error_line(run_cli(*args, "--num-workers", 0, check=False))
        assert "--num-workers 0 must be at least 1" in line, line


def test_a_comma_in_a_store_path_is_explained_and_can_be_escaped(tmp_path, second_store, student_init_dir,
                                                                  error_line):
    store = shutil.copytree(second_store, tmp_path / "teacher,v2.zarr")
    line = error_line(run_cli("distill", "--logits-store", store, "--model", student_init_dir, "--epochs", 1,
                              "--out", tmp_path / "d", check=False))
    assert f"no logit store at {tmp_path}/teacher, one of the 2 stores --logits-store {store} names" in line, line
    assert "commas separate stores; write a comma that is part of a path as \\," in line, line
    line = error_line(run_cli("extract-eval", "--logits-store", store, *STORE_EVAL, "--out", tmp_path / "e",
                              check=False))
    assert "extract-eval reads one store" in line and "written \\," in line, line

    escaped = str(store).replace(",", "\\,")
    summary = json.loads(run_cli("extract-eval", "--logits-store", escaped, *STORE_EVAL, "--out",
                                 tmp_path / "e").stdout.splitlines()[-1])
    assert summary["examples"] == 8
    run_cli("distill", "--logits-store", escaped, "--model", student_init_dir, "--epochs", 1, "--batch-size", 4,
            "--out", tmp_path / "d")
    assert (tmp_path / "d" / "model.safetensors").is_file()
