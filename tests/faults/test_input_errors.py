"""Bad input files: a dataset that is not UTF-8 or holds no text, a model whose config.json is
damaged or has no vocab_size. Each is one line naming the file and the fix, exit 2, before any
model or engine loads, with the inputs unchanged and nothing written at --out."""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import precompute_args, run_cli


def _dataset_command(command, dataset, out, *, teacher_dir, student_init_dir) -> list:
    return {
        "precompute-logits": precompute_args(teacher_dir, dataset, out),
        "distill": ["distill", "--model", student_init_dir, "--dataset", dataset, "--loss", "ce", "--seq-len", 32,
                    "--out", out],
        "extract-eval": ["extract-eval", "--model", teacher_dir, "--dataset", dataset, "--seq-len", 64,
                         "--prefix-len", 16, "--suffix-len", 16, "--out", out],
    }[command]


LATIN1 = (json.dumps({"text": "plain ascii first"}) + "\n").encode() + "caf\xe9 au lait\n".encode("latin-1")
DATASETS = {
    # (file bytes, the message's distinctive part)
    "latin-1": (LATIN1, f"is not UTF-8 text (byte 0xe9 at offset {LATIN1.index(0xe9)}): re-encode it as UTF-8"),
    "empty": (b"", "has no text in field 'text'"),
    "blank texts": (b'{"text": ""}\n{"text": "   "}\n', "has no text in field 'text'"),
}


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("command", ["precompute-logits", "distill", "extract-eval"])
def test_bad_dataset_is_one_line(command, dataset, tmp_path, teacher_dir, student_init_dir, digest, error_line):
    content, message = DATASETS[dataset]
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(content)
    out = tmp_path / "out"
    before = {p: digest(p) for p in (path, teacher_dir, student_init_dir)}
    line = error_line(run_cli(*_dataset_command(command, path, out, teacher_dir=teacher_dir,
                                                student_init_dir=student_init_dir), check=False))
    assert f"dataset {path} " in line and message in line, line
    assert {p: digest(p) for p in (path, teacher_dir, student_init_dir)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]  # nothing at --out, no .partial


CONFIGS = {
    # (config.json bytes from the good one, the message's distinctive part)
    "truncated": (lambda good: good[: len(good) // 2], "config.json is not valid JSON ("),
    "not utf-8": (lambda good: b"\xff\xfe" + good, "config.json is not valid JSON ("),
    "a list": (lambda good: b"[1, 2]", "config.json holds a JSON list, not an object"),
    "no vocab_size": (lambda good: json.dumps({k: v for k, v in json.loads(good).items() if k != "vocab_size"}).encode(),
                      "config.json has no vocab_size: set it to the size of the model's output layer"),
    "vocab_size 0": (lambda good: json.dumps({**json.loads(good), "vocab_size": 0}).encode(),
                     "config.json has vocab_size 0: set it"),
}


@pytest.mark.parametrize("command,config", [("precompute-logits", c) for c in CONFIGS]
                         + [(cmd, c) for cmd in ("extract-eval", "features") for c in ("truncated", "no vocab_size")])
def test_damaged_model_config_is_one_line(command, config, tmp_path, teacher_dir, corpus_file, teacher_store, digest,
                                          error_line):
    model = shutil.copytree(teacher_dir, tmp_path / "model")
    damage, message = CONFIGS[config]
    (model / "config.json").write_bytes(damage((teacher_dir / "config.json").read_bytes()))
    out = tmp_path / "out"
    args = {"precompute-logits": precompute_args(model, corpus_file, out),
            "extract-eval": ["extract-eval", "--model", model, "--dataset", corpus_file, "--seq-len", 64,
                             "--prefix-len", 16, "--suffix-len", 16, "--out", out],
            "features": ["features", "--model", model, "--logits-store", teacher_store, "--prefix-len", 16,
                         "--suffix-len", 16, "--out", out]}[command]
    before = {p: digest(p) for p in (model, corpus_file, teacher_store)}
    line = error_line(run_cli(*args, check=False))
    assert f"{model / 'config.json'} " in line and message in line, line
    assert "tokenizer" not in line  # not the misleading "no usable tokenizer" it used to be
    assert {p: digest(p) for p in (model, corpus_file, teacher_store)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_damaged_student_config_is_one_line(tmp_path, student_init_dir, corpus_file, digest, error_line):
    """distill with a config-only student: the config is the whole model, checked the same way."""
    model = shutil.copytree(student_init_dir, tmp_path / "student")
    (model / "config.json").write_text('{"model_type": "gpt_neox", ')
    before = digest(model)
    line = error_line(run_cli("distill", "--model", model, "--dataset", corpus_file, "--loss", "ce", "--seq-len", 32,
                              "--out", tmp_path / "out", check=False))
    assert f"{model / 'config.json'} is not valid JSON" in line, line
    assert digest(model) == before and not (tmp_path / "out").exists()


def test_records_whose_text_is_not_a_string_are_counted_and_named(tmp_path, docs, corpus_file, teacher_dir):
    """A number and a null among 120 good documents: skipped with a warning that counts them and
    names the first, and the store is the one the good documents alone make."""
    from kdstream.data.corpus import load_corpus
    from kdstream.storage import open_store

    records = [{"text": d} for d in docs]
    records[57:57] = [{"text": 5}]
    records[90:90] = [{"text": None}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = run_cli(*precompute_args(teacher_dir, path, tmp_path / "s.zarr", "--backend", "hf"))
    assert (f"warning: dataset {path}: 2 of {len(records)} records have a 'text' that is not a string "
            "(the first: record 57, 5); they are skipped") in proc.stderr, proc.stderr
    corpus = open_store(str(tmp_path / "s.zarr")).attrs["corpus"]
    assert (corpus["documents"], corpus["fingerprint"]) == (len(docs), load_corpus(str(corpus_file)).fingerprint)
