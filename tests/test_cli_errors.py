"""Bad input → one line naming the problem and the fix, exit status 2, no traceback."""
import pytest
import yaml

from helpers import run_cli


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_missing_model(tmp_path, corpus_file):
    proc = run_cli("precompute-logits", "--model", tmp_path / "nope", "--dataset", corpus_file,
                   "--out", tmp_path / "s.zarr", check=False)
    assert_one_line_error(proc, "teacher model", "not found")


def test_missing_dataset(tmp_path, teacher_dir):
    proc = run_cli("precompute-logits", "--model", teacher_dir, "--dataset", tmp_path / "none.jsonl",
                   "--seq-len", 64, "--out", tmp_path / "s.zarr", check=False)
    assert_one_line_error(proc, "none.jsonl", "not found")
    assert not (tmp_path / "s.zarr").exists()


def test_missing_store(tmp_path, student_init_dir):
    proc = run_cli("distill", "--model", student_init_dir, "--logits-store", tmp_path / "none.zarr",
                   "--out", tmp_path / "o", check=False)
    assert_one_line_error(proc, "no logit store")


def test_kd_loss_without_a_store(tmp_path, student_init_dir, corpus_file):
    proc = run_cli("distill", "--model", student_init_dir, "--dataset", corpus_file, "--out", tmp_path / "o", check=False)
    assert_one_line_error(proc, "--logits-store")


@pytest.mark.slow
def test_prefix_plus_suffix_longer_than_the_example(tmp_path, teacher_dir, teacher_store):
    proc = run_cli("extract-eval", "--model", teacher_dir, "--logits-store", teacher_store, "--prefix-len", 40,
                   "--suffix-len", 40, "--out", tmp_path / "e", check=False)
    assert_one_line_error(proc, "exceeds the example length 64")
    assert not (tmp_path / "e").exists()


def test_config_file_sets_options_and_flags_override(tmp_path, student_init_dir, corpus_file):
    cfg = tmp_path / "opts.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(student_init_dir), "dataset": str(corpus_file), "loss": "ce",
                                   "seq-len": 32, "max_examples": 8, "epochs": 5, "batch_size": 8}))
    run_cli("distill", "--config", cfg, "--epochs", 1, "--out", tmp_path / "o")
    saved = yaml.safe_load((tmp_path / "o" / "options.yaml").read_text())
    assert saved["epochs"] == 1 and saved["seq_len"] == 32 and saved["loss"] == "ce"
    cfg.write_text(yaml.safe_dump({"epochz": 3}))
    proc = run_cli("distill", "--config", cfg, "--out", tmp_path / "p", check=False)
    assert_one_line_error(proc, "unknown options epochz")


def test_write_errors_of_libraries_become_one_line():
    """Disk full as each library reports it: an OSError (Python, zarr, pyarrow), one wrapped in
    another exception, a Rust error that keeps only the text (tokenizers), a C++ iostream error."""
    from tokenizers import Tokenizer, models

    from kdstream.cli.errors import io_error

    with pytest.raises(OSError) as plain:  # /dev/full: every write fails with ENOSPC
        with open("/dev/full", "wb", buffering=0) as f:
            f.write(b"x")
    assert "the disk is full" in str(io_error(plain.value))
    try:
        try:
            raise plain.value
        except OSError as exc:
            raise RuntimeError("could not store the chunk") from exc
    except RuntimeError as wrapped:
        assert "the disk is full" in str(io_error(wrapped))
    with pytest.raises(Exception) as rust:
        Tokenizer(models.BPE()).save("/dev/full")
    assert not isinstance(rust.value, OSError)  # only the text says what happened
    assert "the disk is full" in str(io_error(rust.value))
    assert "disk is full or read-only" in str(io_error(Exception("basic_ios::clear: iostream error")))
    assert io_error(ValueError("operands could not be broadcast together")) is None  # a bug keeps its traceback
