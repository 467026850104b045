"""The evaluation commands' outputs: extract-eval, features and `eval merge` never replace a
directory they did not make (a store, a model, a folder of other files, another command's
output), even with --overwrite; a file at --out is refused before any work; their own earlier
output is replaced only with --overwrite; a full disk or a read-only location is one line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from helpers import run_cli, store_eval_shards

STORE_EVAL = ("--method", "store", "--prefix-len", 16, "--suffix-len", 16)


def _partial(path):
    return path.with_name(path.name + ".partial")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, teacher_store):
    """Two shards of one extract-eval --method store (no model), for `eval merge`."""
    return store_eval_shards(teacher_store, tmp_path_factory.mktemp("shards"), 2, *STORE_EVAL)


def _command(name, out, *, teacher_store, teacher_dir, shards) -> list:
    return {
        "extract-eval": ["extract-eval", "--logits-store", teacher_store, *STORE_EVAL, "--out", out],
        "features": ["features", "--model", teacher_dir, "--logits-store", teacher_store, "--prefix-len", 16,
                     "--suffix-len", 16, "--out", out],
        "eval-merge": ["eval", "merge", *shards, "--out", out],
    }[name]


def _victim(kind, tmp_path, teacher_store, teacher_dir, shards):
    """A directory at --out that the command did not make."""
    if kind == "store":
        return shutil.copytree(teacher_store, tmp_path / "store.zarr")
    if kind == "model":
        return shutil.copytree(teacher_dir, tmp_path / "model")
    if kind == "other-output":  # extract-eval's output, at features' or merge's --out (and vice versa)
        return shutil.copytree(shards[0], tmp_path / "eval")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("a user's file\n")
    return folder


@pytest.mark.parametrize("kind", ["store", "model", "folder", "other-output"])
@pytest.mark.parametrize("command", ["extract-eval", "features", "eval-merge"])
def test_out_the_command_did_not_make_is_left_byte_identical(command, kind, tmp_path, teacher_store, teacher_dir,
                                                             shards, digest, error_line):
    if kind == "other-output" and command != "features":
        victim = _victim(kind, tmp_path, teacher_store, teacher_dir, shards)
        (victim / ".kdstream-output.json").write_text(json.dumps({"command": "features"}) + "\n")
        needle = "is kdstream features's output"
    else:
        victim = _victim(kind, tmp_path, teacher_store, teacher_dir, shards)
        needle = "is kdstream extract-eval's output" if kind == "other-output" else "a directory kdstream did not write"
    inputs = [teacher_store, teacher_dir, *shards]
    before = {p: digest(p) for p in [victim, *inputs]}
    args = _command(command, victim, teacher_store=teacher_store, teacher_dir=teacher_dir, shards=shards)
    line = error_line(run_cli(*args, "--overwrite", check=False))
    assert f"--out {victim} already exists" in line and needle in line, line
    assert "kdstream never replaces what it did not create" in line
    assert {p: digest(p) for p in [victim, *inputs]} == before
    assert not _partial(victim).exists()


@pytest.mark.parametrize("command", ["extract-eval", "features", "classify", "report"])
def test_out_that_is_a_file_is_refused_before_any_work(command, tmp_path, teacher_store, teacher_dir, shards,
                                                       digest, error_line):
    out = tmp_path / "results.txt"
    out.write_text("someone's file\n")
    before = digest(out)
    args = {"classify": ["classify", "--student-eval", shards[0], "--teacher-features", shards[0],
                         "--baseline-features", shards[0], "--out", out],
            "report": ["report", "--teacher-eval", shards[0], "--baseline-eval", shards[0], "--student-eval",
                       shards[0], "--out", out]}.get(command)
    args = args or _command(command, out, teacher_store=teacher_store, teacher_dir=teacher_dir, shards=shards)
    line = error_line(run_cli(*args, check=False))
    assert f"--out {out} is a file: pass a directory path" in line, line
    assert digest(out) == before and not _partial(out).exists()


@pytest.mark.parametrize("command", ["extract-eval", "features", "eval-merge"])
def test_own_earlier_output_is_replaced_only_with_overwrite(command, tmp_path, teacher_store, teacher_dir, shards,
                                                            digest, error_line):
    out = tmp_path / "out"
    args = _command(command, out, teacher_store=teacher_store, teacher_dir=teacher_dir, shards=shards)
    run_cli(*args)
    first = out.stat().st_ino  # the replacement is another directory, renamed into place
    before = digest(out)
    line = error_line(run_cli(*args, check=False))
    assert "pass --overwrite to replace it" in line
    assert digest(out) == before
    run_cli(*args, "--overwrite")
    assert out.stat().st_ino != first and (out / "summary.json").is_file()
    assert not _partial(out).exists()


def test_summaries_record_the_store_identity(tmp_path, teacher_store, teacher_dir, shards):
    """Which store an evaluation read, whatever path or URL it was opened by."""
    from kdstream.storage import open_store

    identity = getattr(open_store(str(teacher_store)), "identity", None)
    for command in ("extract-eval", "features", "eval-merge"):
        out = tmp_path / command
        run_cli(*_command(command, out, teacher_store=teacher_store, teacher_dir=teacher_dir, shards=shards))
        summary = json.loads((out / "summary.json").read_text())
        assert "store_identity" in summary and summary["store_identity"] == identity, command


def test_merge_refuses_shards_of_different_stores(tmp_path, shards, digest, error_line):
    other = shutil.copytree(shards[1], tmp_path / "w1")
    summary = json.loads((other / "summary.json").read_text())
    (other / "summary.json").write_text(json.dumps({**summary, "store_identity": "0" * 64}))
    line = error_line(run_cli("eval", "merge", shards[0], other, "--out", tmp_path / "merged", check=False))
    assert "read different stores" in line
    assert not (tmp_path / "merged").exists()


@pytest.fixture
def small_mount(tmp_path):
    """A 64 KiB tmpfs at tmp_path/mnt (mounting needs root), unmounted after the test."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real small or read-only filesystem needs root and mount(8)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_is_one_line_and_no_output_looks_finished(small_mount, teacher_store, digest, error_line):
    # leave two 4 KiB pages: the owner file and options.yaml fit, results.parquet does not
    (small_mount / "filler").write_bytes(b"\0" * (14 * 4096))
    before = digest(teacher_store)
    out = small_mount / "eval"
    line = error_line(run_cli("extract-eval", "--logits-store", teacher_store, *STORE_EVAL, "--out", out,
                              check=False))
    assert "the disk is full: free space or choose another --out" in line, line
    assert not out.exists() and digest(teacher_store) == before


@pytest.mark.parametrize("command", ["extract-eval", "features"])
def test_a_read_only_location_is_refused_before_any_work(command, small_mount, teacher_store, teacher_dir, shards,
                                                         error_line):
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    out = small_mount / "out"
    line = error_line(run_cli(*_command(command, out, teacher_store=teacher_store, teacher_dir=teacher_dir,
                                        shards=shards), check=False))
    assert f"cannot write under {small_mount}" in line and "read-only" in line, line
    assert not any(small_mount.iterdir())


def test_a_full_disk_while_the_study_saves_its_tokenizer(small_mount, digest, error_line):
    """`reproduce` trains a BPE tokenizer and saves it (tokenizers reports the failed write in Rust
    words, not as an OSError): one line, and no tokenizer/ that a rerun would take for finished."""
    (small_mount / "filler").write_bytes(b"\0" * (12 * 4096))  # room for config.yaml and small files only
    out = small_mount / "study"
    line = error_line(run_cli("reproduce", "--out", out, check=False))
    assert "the disk is full: free space or choose another --out" in line, line
    assert not (out / "tokenizer").exists()


def test_reproduce_does_not_write_into_a_folder_it_did_not_make(tmp_path, teacher_dir, digest, error_line):
    model = shutil.copytree(teacher_dir, tmp_path / "model")
    before = digest(model)
    line = error_line(run_cli("reproduce", "--out", model, check=False))
    assert f"--out {model} already exists and is not a kdstream reproduce output" in line, line
    assert digest(model) == before
