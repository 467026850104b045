"""The commit-msg hook (.pre-commit-config.yaml) holds a subject to 72 characters."""
import subprocess
import sys
from pathlib import Path

HOOK = Path(__file__).resolve().parents[1] / "tools" / "check_commit_subject.py"


def _check(tmp_path, subject: str) -> subprocess.CompletedProcess:
    msg = tmp_path / "COMMIT_EDITMSG"
    msg.write_text(subject + "\n\nThe body may run as long as it needs to.\n")
    return subprocess.run([sys.executable, str(HOOK), str(msg)], capture_output=True, text=True)


def test_a_subject_of_72_characters_passes_and_73_is_refused_in_one_line(tmp_path):
    assert _check(tmp_path, "x" * 72).returncode == 0
    proc = _check(tmp_path, "x" * 73)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "commit subject of 73 characters: keep it to 72 and put the why in the body"]
