"""`kdstream reproduce` on a chat dataset: refused with one line before anything is written."""
from helpers import one_line_error, run_cli


def test_a_chat_dataset_is_refused_in_one_line(tmp_path, chat_file):
    config = tmp_path / "study.yaml"
    config.write_text(f"dataset: {chat_file}\n")
    proc = run_cli("reproduce", "--config", config, "--out", tmp_path / "study", check=False)
    assert "holds conversations: kdstream reproduce runs the protocol on text windows" in one_line_error(proc)
    assert not (tmp_path / "study").exists()
