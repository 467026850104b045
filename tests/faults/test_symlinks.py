"""An --out, its OUT.partial work folder, or the `store tokenizer` target that is a symbolic link
(to a folder, or dangling) is refused with one line before any work: kdstream writes, renames and
replaces real folders only. The link and what it points to are left as they were."""
from __future__ import annotations

import os

import pytest

from helpers import precompute_args, run_cli

STORE_EVAL = ("--method", "store", "--prefix-len", 16, "--suffix-len", 16)


def _command(name, out, store, teacher_dir, corpus_file, student_init_dir) -> list:
    return {
        "extract-eval": ["extract-eval", "--logits-store", store, *STORE_EVAL, "--out", out],
        "distill": ["distill", "--logits-store", store, "--model", student_init_dir, "--epochs", 1, "--out", out],
        "precompute-logits": precompute_args(teacher_dir, corpus_file, out, "--max-examples", 8, "--backend", "hf"),
        "store-tokenizer": ["store", "tokenizer", store, out],
    }[name]


@pytest.mark.parametrize("target", ["folder", "dangling"])
@pytest.mark.parametrize("command", ["extract-eval", "distill", "precompute-logits", "store-tokenizer"])
def test_an_out_that_is_a_symlink_is_one_line(command, target, tmp_path, second_store, teacher_dir, corpus_file,
                                              student_init_dir, digest, error_line):
    pointed = tmp_path / "elsewhere"
    if target == "folder":
        pointed.mkdir()
        (pointed / "keep.txt").write_text("a user's file\n")
    link = tmp_path / "out"
    link.symlink_to(pointed)
    before = digest(pointed)
    args = _command(command, link, second_store, teacher_dir, corpus_file, student_init_dir)
    line = error_line(run_cli(*args, check=False))
    assert f"{link} is a symbolic link (to {pointed})" in line, line
    assert link.is_symlink() and os.readlink(link) == str(pointed) and digest(pointed) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", *(["elsewhere"] if target == "folder" else [])])


@pytest.mark.parametrize("command", ["extract-eval", "distill"])
def test_a_work_folder_that_is_a_symlink_is_one_line(command, tmp_path, second_store, teacher_dir, corpus_file,
                                                     student_init_dir, digest, error_line):
    pointed = tmp_path / "elsewhere"
    pointed.mkdir()
    (pointed / "keep.txt").write_text("a user's file\n")
    out = tmp_path / "out"
    (tmp_path / "out.partial").symlink_to(pointed)
    before = digest(pointed)
    line = error_line(run_cli(*_command(command, out, second_store, teacher_dir, corpus_file, student_init_dir),
                              check=False))
    assert f"work folder {out}.partial is a symbolic link (to {pointed}): remove the link" in line, line
    assert digest(pointed) == before and not out.exists()
