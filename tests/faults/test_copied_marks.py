"""A mark copied into a user's folder never makes kdstream empty it: an output's owner file lists
the files the command wrote, and --overwrite refuses anything else there by name; a store folder
with more than a store's parts is not wiped by precompute-logits --overwrite; a README holding
only the card's marker line, or a card edited since, is not replaced by `store card`. Each runs
the real command and checks exit 2, the one line, and the folder byte-identical afterwards."""
from __future__ import annotations

import json
import shutil

from helpers import precompute_args, run_cli, store_eval_shards

STORE_EVAL = ("--method", "store", "--prefix-len", 16, "--suffix-len", 16)


def _users_folder(tmp_path, mark: str):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "thesis.tex").write_text("a user's only copy\n")
    (folder / ".kdstream-output.json").write_text(mark)
    return folder


def test_a_copied_output_mark_does_not_let_overwrite_empty_a_folder(tmp_path, second_store, student_init_dir,
                                                                      digest, error_line):
    own = store_eval_shards(second_store, tmp_path / "earlier", 1, *STORE_EVAL)[0]
    folder = _users_folder(tmp_path, (own / ".kdstream-output.json").read_text())
    before = digest(folder)
    line = error_line(run_cli("extract-eval", "--logits-store", second_store, *STORE_EVAL, "--out", folder,
                              "--overwrite", check=False))
    assert f"--out {folder} holds files kdstream extract-eval did not write (thesis.tex)" in line, line
    assert digest(folder) == before

    # an owner file that lists nothing (copied from an older kdstream's output) is refused too
    (folder / ".kdstream-output.json").write_text(json.dumps({"command": "distill"}) + "\n")
    before = digest(folder)
    line = error_line(run_cli("distill", "--logits-store", second_store, "--model", student_init_dir, "--epochs", 1,
                              "--out", folder, "--overwrite", check=False))
    assert f"--out {folder} has an owner file that lists no files" in line, line
    assert digest(folder) == before


def test_a_file_added_to_an_output_or_changed_in_it_is_never_deleted(tmp_path, second_store, digest, error_line):
    out = store_eval_shards(second_store, tmp_path / "evals", 1, *STORE_EVAL)[0]
    (out / "notes.md").write_text("my notes on this evaluation\n")
    before = digest(out)
    args = ("extract-eval", "--logits-store", second_store, *STORE_EVAL, "--out", out, "--overwrite")
    line = error_line(run_cli(*args, check=False))
    assert "did not write (notes.md)" in line and "move them away" in line, line
    assert digest(out) == before

    (out / "notes.md").unlink()
    summary = out / "summary.json"
    summary.write_text(summary.read_text() + " ")  # the user's edit of a file the command wrote
    line = error_line(run_cli(*args, check=False))
    assert "did not write (summary.json)" in line, line

    summary.write_text(summary.read_text()[:-1])  # as written: replaced
    run_cli(*args)
    assert sorted(json.loads((out / ".kdstream-output.json").read_text())["files"]) == sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != ".kdstream-output.json")


def test_a_bare_store_marker_does_not_let_precompute_overwrite_a_folder(tmp_path, second_store, teacher_dir,
                                                                         corpus_file, digest, error_line):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "experiment.csv").write_text("a,b\n1,2\n")
    (folder / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                  "attributes": {"format": "kdstream-logits"}}))
    # a real store with a user's file beside its arrays
    store = shutil.copytree(second_store, tmp_path / "store.zarr")
    (store / "my-analysis.ipynb").write_text("{}\n")
    for victim, name in ((folder, "experiment.csv"), (store, "my-analysis.ipynb")):
        before = digest(victim)
        args = precompute_args(teacher_dir, corpus_file, victim, "--max-examples", 8, "--backend", "hf")
        line = error_line(run_cli(*args, "--overwrite", check=False))
        assert f"--overwrite would delete {victim}, which holds more than a kdstream store ({name})" in line, line
        assert digest(victim) == before

    # a store with nothing but its own parts and the card kdstream wrote for it is replaced
    (store / "my-analysis.ipynb").unlink()
    run_cli("store", "card", store)
    run_cli(*precompute_args(teacher_dir, corpus_file, store, "--max-examples", 8, "--backend", "hf"), "--overwrite")
    assert not (store / "README.md").exists() and (store / "zarr.json").exists()


def test_a_readme_holding_the_card_marker_is_not_a_card(tmp_path, second_store, digest, error_line):
    store = shutil.copytree(second_store, tmp_path / "store.zarr")
    readme = store / "README.md"
    readme.write_text("# Our dataset\n<!-- kdstream store card -->\nOur own words.\n")
    line = error_line(run_cli("store", "card", store, check=False))
    assert f"{readme} is not the card kdstream wrote there" in line and "--overwrite" in line, line
    assert readme.read_text() == "# Our dataset\n<!-- kdstream store card -->\nOur own words.\n"

    readme.unlink()
    run_cli("store", "card", store)
    run_cli("store", "card", store)  # its own card, unchanged: replaced
    readme.write_text(readme.read_text() + "\nOur own paragraph.\n")
    before = digest(store)
    line = error_line(run_cli("store", "card", store, check=False))
    assert "is not the card kdstream wrote there (edited since" in line, line
    assert digest(store) == before
