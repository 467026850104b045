"""distill through its CLI on a real store: determinism, data order, tokenizer checks."""
import json

import pytest

from helpers import NUM_EXAMPLES, SEQ_LEN, last_json, losses, run_cli, weight_gap

pytestmark = pytest.mark.slow


def test_kd_from_store_is_deterministic_and_saves_a_loadable_checkpoint(tmp_path, teacher_store, student_init_dir):
    args = ["distill", "--logits-store", teacher_store, "--model", student_init_dir, "--epochs", 2,
            "--batch-size", 8, "--lr", "1e-3", "--temperature", 2]
    first = last_json(run_cli(*args, "--out", tmp_path / "a").stdout)
    run_cli(*args, "--out", tmp_path / "b")
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(la) == first["steps"] == 2 * -(-NUM_EXAMPLES // 8)
    assert "store_identity" in first  # the store's manifest hash (None for a store without one)
    assert la == lb  # same command + seed => same losses, bit for bit
    assert la[-1] < la[0]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "a"))
    assert model.config.vocab_size == 512
    AutoTokenizer.from_pretrained(str(tmp_path / "a"))
    opts = (tmp_path / "a" / "options.yaml").read_text()
    assert "loss: forward_kl" in opts and "temperature: 2.0" in opts
    assert not (tmp_path / "a.partial").exists()


def test_ce_sees_the_same_data_order_from_a_dataset_as_from_the_store(
    tmp_path, teacher_store, student_init_dir, corpus_file
):
    common = ["distill", "--model", student_init_dir, "--loss", "ce", "--epochs", 1, "--batch-size", 8]
    run_cli(*common, "--logits-store", teacher_store, "--out", tmp_path / "store")
    run_cli(*common, "--dataset", corpus_file, "--seq-len", SEQ_LEN, "--max-examples", NUM_EXAMPLES,
            "--out", tmp_path / "data")
    assert losses(tmp_path / "store") == losses(tmp_path / "data")


def test_a_student_with_another_tokenizer_is_refused_before_training(tmp_path, teacher_store, docs):
    """... when nothing gives the teacher's tokenizer: a store written before stores carried it
    and no --teacher-tokenizer (a store that carries it trains across tokenizers:
    test_cross_tokenizer_distill.py)."""
    from helpers import make_gpt_neox, without_tokenizer
    from kdstream.text.tokenizers import train_bpe_tokenizer

    other = train_bpe_tokenizer(docs, 512 - 64, tmp_path / "tok")
    student = make_gpt_neox(tmp_path / "student", other, vocab=512)
    old = without_tokenizer(teacher_store, tmp_path / "old.zarr")
    proc = run_cli("distill", "--logits-store", old, "--model", student, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--teacher-tokenizer" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# Runs the CLI with checkpoint saving wrapped so the process SIGKILLs itself right after the
# checkpoint of step KILL_AT_CHECKPOINT is written: exact, where a kill timed from outside by
# polling for the directory could land before or after later steps.
KILL_LAUNCHER = """
import os, signal, sys
from kdstream.distill import checkpoint

kill_at, save = int(os.environ["KILL_AT_CHECKPOINT"]), checkpoint.save_checkpoint

def save_then_die(run, *rest):
    path = save(run, *rest)
    if run.pos.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return path

checkpoint.save_checkpoint = save_then_die
from kdstream.cli import main
sys.argv[0] = "kdstream"
main()
"""


def kill_after_checkpoint(args: list, out, step: int):
    """Run `kdstream ARGS --out OUT`, SIGKILLed right after its step-``step`` checkpoint (see
    KILL_LAUNCHER); returns OUT."""
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", KILL_LAUNCHER, *map(str, args), "--out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TQDM_DISABLE": "1", "KILL_AT_CHECKPOINT": str(step)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    partial = out.parent / (out.name + ".partial")
    assert sorted(p.name for p in (partial / "checkpoints").iterdir()) == [f"step-{step:08d}"]
    assert not out.exists()
    return out


def test_sigkill_then_resume_gives_the_uninterrupted_losses_and_weights(tmp_path, teacher_store, student_init_dir):
    args = ["distill", "--logits-store", teacher_store, "--model", student_init_dir, "--epochs", 3,
            "--batch-size", 8, "--lr", "1e-3", "--checkpoint-every", 2]
    run_cli(*args, "--out", tmp_path / "straight")

    out = kill_after_checkpoint(args, tmp_path / "killed", 4)
    state = json.loads((tmp_path / "killed.partial" / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["position"] == {"step": 4, "epoch": 1, "batch_in_epoch": 1} and state["options"]["lr"] == 1e-3
    assert not list((tmp_path / "killed.partial").rglob("*.pt"))  # nothing pickled

    # options that do not change the result may differ on resume
    summary = last_json(run_cli(*args, "--out", out, "--resume", "--prefetch", 1, "--no-tensorboard",
                                "--checkpoint-every", 5, "--no-verify-store").stdout)
    assert summary["resumed_from_step"] == 4
    assert losses(out) == losses(tmp_path / "straight")
    assert weight_gap(out, tmp_path / "straight") == 0


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_torchrun_two_ranks_match_one_process(tmp_path, teacher_store, student_init_dir, fsdp):
    """DDP (or FSDP2) over gloo with the same global batch gives the single-process losses and
    weights, with mid-run checkpoints (under FSDP gathered from the shards on every rank). --loss-chunk 100:
    the fused head runs several chunks per micro-batch (its gradients reach DDP's and FSDP's hooks)."""
    import os
    import shutil
    import subprocess
    import sys

    # 24 examples, batch 10: the last batch (4 rows) splits unevenly, 2 + 2.
    args = ["--logits-store", teacher_store, "--model", student_init_dir, "--epochs", 2, "--batch-size", 10,
            "--lr", "1e-3", "--temperature", 2, "--loss-chunk", 100, "--checkpoint-every", 2, *(["--fsdp"] if fsdp else [])]
    run_cli("distill", *[a for a in args if a != "--fsdp"], "--out", tmp_path / "one")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "kdstream", "distill", *map(str, args),
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["world_size"] == 2
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    assert weight_gap(tmp_path / "one", tmp_path / "two") < 1e-4


def test_fsdp_resumes_a_killed_run_with_the_uninterrupted_losses(tmp_path, teacher_store, student_init_dir):
    """A single process SIGKILLed after its step-4 checkpoint, resumed by 2 FSDP2 ranks
    (torchrun, gloo): checkpoints hold full state dicts, so FSDP re-shards them on load and the
    remaining steps give the uninterrupted run's losses and final weights."""
    import os
    import shutil
    import subprocess
    import sys

    args = ["--logits-store", teacher_store, "--model", student_init_dir, "--epochs", 3, "--batch-size", 8,
            "--lr", "1e-3", "--checkpoint-every", 2]
    run_cli("distill", *args, "--out", tmp_path / "straight")
    out = kill_after_checkpoint(["distill", *args], tmp_path / "killed", 4)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "kdstream", "distill", *map(str, args),
                           "--fsdp", "--resume", "--out", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["resumed_from_step"] == 4
    assert losses(out) == pytest.approx(losses(tmp_path / "straight"), rel=1e-4)
    assert weight_gap(out, tmp_path / "straight") < 1e-4


def test_grad_accum_and_loader_workers_do_not_change_the_update(tmp_path, teacher_store, student_init_dir):
    """3 micro-batches read by 2 DataLoader processes = one batch from the in-process reader."""
    args = ["distill", "--logits-store", teacher_store, "--model", student_init_dir, "--epochs", 2,
            "--batch-size", 10, "--lr", "1e-3"]
    run_cli(*args, "--out", tmp_path / "plain")
    run_cli(*args, "--out", tmp_path / "accum", "--grad-accum", 3, "--loader-workers", 2, "--prefetch", 1)
    assert losses(tmp_path / "accum") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5)


def test_held_out_eval_every_n_steps_with_tensorboard_events(tmp_path, teacher_store, student_init_dir):
    out = tmp_path / "run"
    summary = last_json(run_cli("distill", "--logits-store", teacher_store, "--model", student_init_dir, "--epochs", 2,
                                "--batch-size", 5, "--lr", "1e-3", "--eval-examples", 4, "--eval-every", 3,
                                "--out", out).stdout)
    assert summary["examples"] == NUM_EXAMPLES - 4 and summary["held_out"] == 4 and summary["steps"] == 8
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in records if "eval_loss" in r]
    assert evals == [3, 6, 8]  # every 3 steps and at the end
    assert summary["final_eval_loss"] == records[-1]["eval_loss"] > 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_bf16_autocast_trains_close_to_fp32(tmp_path, teacher_store, student_init_dir):
    args = ["distill", "--logits-store", teacher_store, "--model", student_init_dir, "--epochs", 1,
            "--batch-size", 8, "--lr", "1e-3"]
    run_cli(*args, "--out", tmp_path / "fp32", "--precision", "fp32")
    summary = last_json(run_cli(*args, "--out", tmp_path / "bf16", "--precision", "bf16").stdout)
    assert summary["precision"] == "bf16"
    assert losses(tmp_path / "bf16") == pytest.approx(losses(tmp_path / "fp32"), rel=0.05)


def test_a_corrupt_chunk_stops_the_run_before_any_step(tmp_path, teacher_store, student_init_dir):
    import shutil

    bad = tmp_path / "bad.zarr"
    shutil.copytree(teacher_store, bad)
    chunk = sorted(p for p in (bad / "topk_logprobs").rglob("*") if p.is_file() and p.name != "zarr.json")[-1]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    proc = run_cli("distill", "--logits-store", bad, "--model", student_init_dir, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()
    assert len(error) == 1 and "topk_logprobs" in error[0] and "chunk" in error[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial" / "metrics.jsonl").exists()
    # without the up-front check the run stops at the chunk, from a DataLoader worker process too,
    # with the reader's one-line error (torch re-raises it with the worker's traceback inside)
    late = run_cli("distill", "--logits-store", bad, "--model", student_init_dir, "--out", tmp_path / "late",
                   "--no-verify-store", "--loader-workers", 1, check=False)
    assert late.returncode == 2 and "Traceback" not in late.stderr
    line = [ln for ln in late.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "corrupt chunk in topk_logprobs" in line[0], late.stderr[-2000:]
    assert not (tmp_path / "late" / "train_summary.json").exists()


def test_ce_sampled_trains_on_a_sampled_store_and_is_refused_on_a_top_k_one(
    tmp_path, teacher_dir, corpus_file, teacher_store, student_init_dir
):
    from helpers import precompute_args

    sampled = tmp_path / "sampled.zarr"
    run_cli(*precompute_args(teacher_dir, corpus_file, sampled, "--targets", "sampled", "--samples", 16,
                             "--backend", "hf"))
    args = ["distill", "--model", student_init_dir, "--loss", "ce_sampled", "--epochs", 2, "--batch-size", 8,
            "--lr", "1e-3"]
    run_cli(*args, "--logits-store", sampled, "--out", tmp_path / "s")
    records = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["kd"] > 0 for r in records)  # alpha_ce 0: the loss is the sampled CE
    assert records[-1]["loss"] < records[0]["loss"]
    proc = run_cli(*args, "--logits-store", teacher_store, "--out", tmp_path / "t", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "sampled store" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.partial").exists()


def test_exclude_ids_absent_from_the_store_are_named_in_a_warning(tmp_path, teacher_store, student_init_dir):
    """... and --max-examples keeps the store's first rows (the excluded ids among them stay out)."""
    ids = tmp_path / "exclude.txt"
    ids.write_text("\n".join(map(str, [0, 3, 5, 100, 101, 999])) + "\n")
    proc = run_cli("distill", "--logits-store", teacher_store, "--model", student_init_dir, "--epochs", 1,
                   "--batch-size", 8, "--exclude", ids, "--max-examples", NUM_EXAMPLES - 4, "--out", tmp_path / "out")
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == [f"warning: 3 of 6 ids in --exclude {ids} are not in the store: 100, 101, 999"]
    summary = last_json(proc.stdout)
    assert summary["examples"] == NUM_EXAMPLES - 4 - 3 and summary["steps"] == -(-(NUM_EXAMPLES - 7) // 8)


@pytest.mark.parametrize("config,message", [
    ('{"model_type": "gpt_neox", "vocab_size": 512,', "is not valid JSON"),
    ('["gpt_neox"]', "holds a JSON list, not an object"),
    (None, "has no vocab_size"),
], ids=["not-json", "not-object", "no-vocab"])
def test_a_broken_student_config_is_one_line(tmp_path, teacher_store, student_init_dir, config, message):
    import shutil

    student = shutil.copytree(student_init_dir, tmp_path / "student")
    if config is None:
        fields = json.loads((student / "config.json").read_text())
        del fields["vocab_size"]
        config = json.dumps(fields)
    (student / "config.json").write_text(config)
    proc = run_cli("distill", "--logits-store", teacher_store, "--model", student, "--out", tmp_path / "out",
                   check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: {student / 'config.json'} ") and message in lines[0]
    assert not (tmp_path / "out.partial").exists()
