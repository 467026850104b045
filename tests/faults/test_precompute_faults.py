"""precompute-logits faults: an --out that is not a store, a teacher changed under a killed run,
two runs on one store at once. Each: exit 2, one `error:` line, inputs and earlier output
byte-identical (``digest``)."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from helpers import make_gpt_neox, precompute_args, run_cli

# Runs the CLI with StoreWriter.write_chunk wrapped: at chunk write number AT (0-based, counted in
# this process) the process either SIGKILLs itself (ACTION=kill) or writes PAUSE.paused and waits
# until PAUSE.go exists (ACTION=pause). Chosen writes, not timing: the fault happens at the same
# point on a fast or a loaded machine.
LAUNCHER = """
import os, signal, sys, time
from kdstream.storage.writer import StoreWriter
at, action, pause = int(os.environ["AT"]), os.environ["ACTION"], os.environ.get("PAUSE", "")
original, calls = StoreWriter.write_chunk, [0]

def write_chunk(self, c, rows):
    calls[0] += 1
    if calls[0] - 1 == at:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        open(pause + ".paused", "w").close()
        deadline = time.time() + 300
        while not os.path.exists(pause + ".go") and time.time() < deadline:
            time.sleep(0.1)
    original(self, c, rows)

StoreWriter.write_chunk = write_chunk
from kdstream.cli import main
sys.argv[0] = "kdstream"
main()
"""


def launch(args, at: int, action: str, pause: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "AT": str(at), "ACTION": action, "PAUSE": str(pause or ""), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def hf_args(teacher, corpus, out, *extra):
    """The session store's settings on the HF backend (loads in seconds; the faults are not the backend's)."""
    return precompute_args(teacher, corpus, out, "--backend", "hf", "--chunk-rows", "2", *extra)


# --- 2: an --out that is not a kdstream store --------------------------------------------------------

def _model_copy(tmp_path, teacher_dir):
    return Path(shutil.copytree(teacher_dir, tmp_path / "teacher"))


def _folder(tmp_path, teacher_dir):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "todo.txt").write_text("keep me\n")
    return d


def _file(tmp_path, teacher_dir):
    f = tmp_path / "out.zarr"
    f.write_text("a file\n")
    return f


def _foreign_zarr(tmp_path, teacher_dir):
    d = tmp_path / "other.zarr"
    zarr.open_group(str(d), mode="w", zarr_format=3, attributes={"owner": "someone else"}).create_array(
        "x", shape=(4,), dtype="int32", fill_value=0)[:] = 7
    return d


@pytest.mark.parametrize("make, overwrite, message", [
    (_model_copy, True, "is a folder that is not a kdstream store (no zarr.json)"),  # the teacher's own directory
    (_model_copy, False, "is a folder that is not a kdstream store (no zarr.json)"),
    (_folder, False, "is a folder that is not a kdstream store"),
    (_file, True, "is a file"),
    (_foreign_zarr, True, "is a Zarr store but not a kdstream logit store"),
])
def test_out_that_is_not_a_store_is_refused_untouched(tmp_path, teacher_dir, corpus_file, digest, error_line,
                                                     make, overwrite, message):
    out = make(tmp_path, teacher_dir)
    model = out if make is _model_copy else teacher_dir  # `--model T --out T`: the copy is both
    before, teacher_before = digest(out), digest(teacher_dir)
    start = time.monotonic()
    proc = run_cli(*precompute_args(model, corpus_file, out, *(["--overwrite"] if overwrite else [])), check=False)
    assert message in error_line(proc)
    assert digest(out) == before and digest(teacher_dir) == teacher_before
    # refused at once: before the weights are hashed or the store's 5 s of open retries
    assert time.monotonic() - start < 60


# --- 7: a teacher changed in the middle of its weights after a killed run ---------------------------

@pytest.mark.slow
def test_resume_after_the_teacher_changed_in_the_middle_is_refused(tmp_path, tokenizer, corpus_file, digest,
                                                                   error_line, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the fingerprint cache: ours, and used
    # hidden 256: a 7 MiB weight file, so its middle is far from the first and last MiB
    teacher = make_gpt_neox(tmp_path / "teacher", tokenizer, hidden=256, heads=4, seed=5)
    weights = teacher / "model.safetensors"
    assert weights.stat().st_size > 4 << 20
    out = tmp_path / "store.zarr"
    proc = launch(hf_args(teacher, corpus_file, out), 2, "kill")
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert (out / "zarr.json").is_file()

    with weights.open("r+b") as fh:  # one byte of one weight, in the middle of the file
        fh.seek(weights.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x01]))
    store_before, teacher_before = digest(out), digest(teacher)
    rerun = run_cli(*hf_args(teacher, corpus_file, out), check=False)
    assert "teacher.weights_fingerprint" in error_line(rerun)
    assert digest(out) == store_before and digest(teacher) == teacher_before


# --- concurrency: a second run on a store another run is writing -----------------------------------

@pytest.mark.slow
def test_a_second_run_on_a_store_being_written_is_refused(tmp_path, teacher_dir, corpus_file, digest, error_line):
    out, pause = tmp_path / "store.zarr", tmp_path / "pause"
    first = launch(hf_args(teacher_dir, corpus_file, out), 1, "pause", pause)
    try:
        deadline = time.time() + 300
        while not Path(f"{pause}.paused").exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.2)
        owners = out / "chunk_done" / "owners"
        assert [p.name for p in owners.iterdir()] == ["0-of-1.json"]

        def content():  # the store but the first run's heartbeat, which may rewrite its mark meanwhile
            return {k: v for k, v in digest(out).items() if not k.startswith("chunk_done/owners/")}

        before, teacher_before = content(), digest(teacher_dir)
        for extra in ([], ["--overwrite"]):  # resume it, or wipe it: both would break the first run
            second = run_cli(*hf_args(teacher_dir, corpus_file, out, *extra), check=False)
            assert "another precompute-logits" in error_line(second) and f"pid {first.pid}" in second.stderr
            assert content() == before and digest(teacher_dir) == teacher_before
        assert first.poll() is None  # still running, still paused
    finally:
        Path(f"{pause}.go").touch()
        code = first.wait(timeout=300)
    assert code == 0, first.stderr.read()[-2000:]
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is True
    assert not owners.exists()  # the mark goes with the run
    assert run_cli("store", "verify", out).stdout.strip().splitlines()[-1].startswith("ok:")
