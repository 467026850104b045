"""distill against hostile or careless inputs: a pickled checkpoint, --resume under other options,
a rerun over an interrupted run, --out over a store / model / folder / file, and a store damaged
while the run reads it. Each runs the real command and checks exit 2, the one line, and that the
inputs and earlier outputs (checkpoints included) are byte-identical afterwards."""
import os
import shutil
import signal
import subprocess
import sys

import pytest

from helpers import precompute_args, run_cli

pytestmark = pytest.mark.slow

# Runs the CLI with two hooks: SIGKILL right after the checkpoint of step KILL_AT_CHECKPOINT is
# written (an interrupted run, exactly there), or flip a byte in every topk_logprobs chunk of
# CORRUPT_STORE after optimizer step CORRUPT_AFTER_STEP (a store damaged while it is read).
LAUNCHER = """
import os, signal, sys
from pathlib import Path
from kdstream.distill import checkpoint, step as step_module

kill_at, corrupt_after = int(os.environ.get("KILL_AT_CHECKPOINT", 0)), int(os.environ.get("CORRUPT_AFTER_STEP", 0))
save, step, calls = checkpoint.save_checkpoint, step_module.optimizer_step, [0]

def save_then_die(run, *rest):
    path = save(run, *rest)
    if run.pos.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return path

def step_then_corrupt(*args):
    result = step(*args)
    calls[0] += 1
    if calls[0] == corrupt_after:
        for chunk in Path(os.environ["CORRUPT_STORE"], "topk_logprobs").rglob("*"):
            if chunk.is_file() and chunk.name != "zarr.json":
                data = bytearray(chunk.read_bytes())
                data[len(data) // 2] ^= 0xFF
                chunk.write_bytes(bytes(data))
        print(f"corrupted the store after step {calls[0]}", file=sys.stderr)
    return result

checkpoint.save_checkpoint, step_module.optimizer_step = save_then_die, step_then_corrupt
from kdstream.cli import main
sys.argv[0] = "kdstream"
main()
"""


def launch(args: list, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCHER, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TQDM_DISABLE": "1", **{k: str(v) for k, v in env.items()}})


def distill_args(store, student, out, *extra) -> list:
    # 24 examples, batch 4: 6 steps, a checkpoint every 2
    return ["distill", "--logits-store", store, "--model", student, "--epochs", 1, "--batch-size", 4,
            "--lr", "1e-3", "--checkpoint-every", 2, "--out", out, *extra]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, teacher_store, student_init_dir):
    """OUT.partial of a run SIGKILLed right after its step-2 checkpoint (copy it before use)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    proc = launch(distill_args(teacher_store, student_init_dir, out), KILL_AT_CHECKPOINT=2)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    partial = out.with_name("run.partial")
    assert (partial / "checkpoints" / "step-00000002" / "state.json").is_file()
    return partial


def copy_interrupted(interrupted, tmp_path):
    """(OUT, its OUT.partial copied from the interrupted run)."""
    out = tmp_path / "run"
    shutil.copytree(interrupted, tmp_path / "run.partial")
    return out, tmp_path / "run.partial"


def test_a_pickled_checkpoint_is_refused_and_never_unpickled(tmp_path, interrupted, teacher_store, student_init_dir,
                                                              digest, error_line):
    """Issue 10: a crafted state.pt whose unpickling would create a file."""
    import torch

    out, partial = copy_interrupted(interrupted, tmp_path)
    ckpt = partial / "checkpoints" / "step-00000002"
    marker = tmp_path / "unpickled"

    class Crafted:
        def __reduce__(self):
            return open, (str(marker), "w")

    for name in ("state.json", "state.safetensors"):
        (ckpt / name).unlink()
    torch.save({"position": Crafted()}, ckpt / "state.pt")
    before = digest(tmp_path)
    proc = run_cli(*distill_args(teacher_store, student_init_dir, out, "--resume"), check=False)
    assert "written by an older kdstream or not by kdstream" in error_line(proc)
    assert not marker.exists()
    assert digest(tmp_path) == before and not out.exists()


def test_a_damaged_checkpoint_state_is_refused(tmp_path, interrupted, teacher_store, student_init_dir, digest,
                                               error_line):
    out, partial = copy_interrupted(interrupted, tmp_path)
    (partial / "checkpoints" / "step-00000002" / "state.json").write_text('{"format": 2, "position": ')
    before = digest(tmp_path)
    proc = run_cli(*distill_args(teacher_store, student_init_dir, out, "--resume"), check=False)
    assert "state.json is damaged" in error_line(proc)
    assert digest(tmp_path) == before and not out.exists()


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: the file still loads, with other numbers
    path.write_bytes(bytes(data))


CHECKPOINT_DAMAGE = {
    # (what is done to checkpoint step-2, the message's distinctive part)
    "a byte of model.safetensors": (lambda c: _flip_middle_byte(c / "model.safetensors"),
                                    "model.safetensors is damaged: its sha256 differs from the one in digests.json"),
    "a byte of state.safetensors": (lambda c: _flip_middle_byte(c / "state.safetensors"),
                                    "state.safetensors is damaged: its sha256 differs from the one in digests.json"),
    "a file added": (lambda c: (c / "pytorch_model.bin").write_bytes(b"x"),
                     "holds \"pytorch_model.bin\", which kdstream did not write"),
    "a file removed": (lambda c: (c / "config.json").unlink(), "is missing config.json"),
    "no digests (an older checkpoint)": (lambda c: (c / "digests.json").unlink(),
                                         "has no readable digests.json (written by an older kdstream, or damaged)"),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
def test_a_damaged_checkpoint_file_is_refused(damage, tmp_path, interrupted, teacher_store, student_init_dir, digest,
                                              error_line):
    out, partial = copy_interrupted(interrupted, tmp_path)
    do, message = CHECKPOINT_DAMAGE[damage]
    do(partial / "checkpoints" / "step-00000002")
    before = digest(tmp_path)
    line = error_line(run_cli(*distill_args(teacher_store, student_init_dir, out, "--resume"), check=False))
    assert message in line and line.endswith("drop --resume and pass --overwrite to start over"), line
    assert digest(tmp_path) == before and not out.exists()


def _forge_state(checkpoint, edit) -> None:
    """Edit state.json and record the new digests, as a careful forger would: what is left to
    refuse the edit is its meaning."""
    import hashlib
    import json

    state = json.loads((checkpoint / "state.json").read_text())
    edit(state)
    (checkpoint / "state.json").write_text(json.dumps(state))
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in checkpoint.iterdir()
               if p.name != "digests.json"}
    (checkpoint / "digests.json").write_text(json.dumps({"sha256": digests}))


STATE_EDITS = {
    # 1 epoch of 6 steps, the checkpoint at step 2: (edit, the message's distinctive part)
    "step -5": (lambda s: s["position"].update(step=-5), "its position (step -5, epoch 0, batch 2) is not a point "
                                                         "of this run (1 epochs of 6 steps)"),
    "epoch 1e9": (lambda s: s["position"].update(epoch=1e9), "its position (step 2, epoch 1000000000.0, batch 2)"),
    "batch 1e12": (lambda s: s["position"].update(batch_in_epoch=10**12), "(step 2, epoch 0, batch 1000000000000)"),
    "step 4 in step-2": (lambda s: s["position"].update(step=4, batch_in_epoch=4), "(step 4, epoch 0, batch 4)"),
    "base_lrs x10": (lambda s: s["scheduler"].update(base_lrs=[0.01]),
                     "its scheduler base_lrs is [0.01], this run's options make it [0.001]"),
    "group lr": (lambda s: s["optimizer"]["param_groups"][0].update(lr=0.5), "its optimizer lr is 0.5,"),
    "weight decay": (lambda s: s["optimizer"]["param_groups"][0].update(weight_decay=0.3),
                     "its optimizer weight_decay is 0.3, this run's options make it 0.0"),
}


@pytest.mark.parametrize("edit", list(STATE_EDITS))
def test_a_hand_edited_checkpoint_state_is_refused(edit, tmp_path, interrupted, teacher_store, student_init_dir,
                                                   digest, error_line):
    """Positions outside the run's plan and a schedule other than the options' are refused, not
    obeyed: the lr in force is the one options.yaml records."""
    out, partial = copy_interrupted(interrupted, tmp_path)
    change, message = STATE_EDITS[edit]
    _forge_state(partial / "checkpoints" / "step-00000002", change)
    before = digest(tmp_path)
    line = error_line(run_cli(*distill_args(teacher_store, student_init_dir, out, "--resume"), check=False))
    assert message in line and line.endswith("drop --resume and pass --overwrite to start over"), line
    assert digest(tmp_path) == before and not out.exists()


@pytest.mark.parametrize("change,flag", [
    (["--lr", "2e-3"], "--lr 0.001"),
    (["--batch-size", 8], "--batch-size 4"),
    (["--loss", "reverse_kl"], "--loss forward_kl"),
    (["--epochs", 2], "--epochs 1"),
    (["--precision", "bf16"], "--precision fp32"),
])
def test_resume_under_other_options_is_refused(tmp_path, interrupted, teacher_store, student_init_dir, change, flag,
                                               digest, error_line):
    """Issue 6: every option that changes the result is compared with the checkpoint's."""
    out, _ = copy_interrupted(interrupted, tmp_path)
    before = digest(tmp_path)
    args = distill_args(teacher_store, student_init_dir, out, "--resume")
    proc = run_cli(*args[:-3], *change, *args[-3:], check=False)  # a later flag wins
    line = error_line(proc)
    assert f"the checkpoint was made with {flag}, this run has {change[0]}" in line, line
    assert "drop --resume" in line
    assert digest(tmp_path) == before and not out.exists()


def test_resume_from_another_store_is_refused(tmp_path, interrupted, teacher_dir, corpus_file, student_init_dir,
                                              digest, error_line):
    """Issue 6: the same examples precomputed again are another store (compared by identity
    when the store has one, else by path)."""
    other = tmp_path / "other.zarr"
    run_cli(*precompute_args(teacher_dir, corpus_file, other, "--backend", "hf"))
    out, _ = copy_interrupted(interrupted, tmp_path)
    before = digest(tmp_path)
    proc = run_cli(*distill_args(other, student_init_dir, out, "--resume"), check=False)
    line = error_line(proc)
    assert "--resume: the checkpoint was made" in line and "store" in line, line
    assert digest(tmp_path) == before and not out.exists()


def test_a_rerun_without_resume_keeps_the_interrupted_runs_checkpoints(tmp_path, interrupted, teacher_store,
                                                                       student_init_dir, digest, error_line):
    """Issue 3."""
    out, _ = copy_interrupted(interrupted, tmp_path)
    before = digest(tmp_path)
    proc = run_cli(*distill_args(teacher_store, student_init_dir, out), check=False)
    assert "holds the checkpoints of an interrupted run: pass --resume" in error_line(proc)
    assert digest(tmp_path) == before and not out.exists()


def _model_dir(tmp_path, teacher_dir):
    return shutil.copytree(teacher_dir, tmp_path / "model")


def _folder(tmp_path, _):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("mine\n")
    return tmp_path / "folder"


def _file(tmp_path, _):
    (tmp_path / "file.bin").write_bytes(b"not a directory")
    return tmp_path / "file.bin"


@pytest.mark.parametrize("make,message", [(_model_dir, "kdstream did not write"), (_folder, "kdstream did not write"),
                                          (_file, "is a file")], ids=["model", "folder", "file"])
def test_out_that_is_not_a_distill_output_is_refused_before_training(tmp_path, teacher_store, teacher_dir,
                                                                     student_init_dir, make, message, digest,
                                                                     error_line):
    """Issue 1: a model directory, a folder of other files or a file at --out; refused before
    any work (no OUT.partial is made), left byte-identical."""
    out = make(tmp_path, teacher_dir)
    before = digest(tmp_path)
    proc = run_cli(*distill_args(teacher_store, student_init_dir, out), check=False)
    assert message in error_line(proc)
    assert digest(tmp_path) == before and not out.with_name(out.name + ".partial").exists()


def test_out_that_is_the_store_being_read_is_refused(tmp_path, teacher_store, student_init_dir, digest, error_line):
    """Issue 1: `--logits-store s.zarr --out s.zarr` leaves the store byte-identical."""
    store = shutil.copytree(teacher_store, tmp_path / "s.zarr")
    before = digest(tmp_path)
    proc = run_cli(*distill_args(store, student_init_dir, store), check=False)
    assert f"--out {store} already exists" in error_line(proc)
    assert digest(tmp_path) == before


@pytest.mark.parametrize("workers", [0, 1], ids=["thread", "dataloader"])
def test_a_store_damaged_mid_run_stops_it_with_one_line_and_publishes_nothing(tmp_path, teacher_store,
                                                                              student_init_dir, workers, digest,
                                                                              error_line):
    """Issue 5: every topk_logprobs chunk corrupted after step 2 (no up-front verify): the
    reader's crc32c error reaches the CLI as one line from the background thread and from a
    DataLoader worker process; no OUT, the student untouched."""
    store = shutil.copytree(teacher_store, tmp_path / "s.zarr")
    out = tmp_path / "run"
    before = digest(student_init_dir)
    # 2 epochs of 6 steps, 4-row blocks: the store is read again after the damage whatever the prefetch
    args = distill_args(store, student_init_dir, out, "--epochs", 2, "--shuffle-block", 4, "--no-verify-store",
                        "--loader-workers", workers)
    proc = launch(args, CORRUPT_STORE=store, CORRUPT_AFTER_STEP=2)
    assert "corrupted the store after step 2" in proc.stderr
    assert "corrupt chunk in topk_logprobs" in error_line(proc)
    assert not out.exists() and digest(student_init_dir) == before
