"""The study's ablation arms: `arms: [hard]` adds a student trained on the teacher's top-1 tokens
beside the KL student (same store, data order, steps and seed) and reports it; a finished study
gains the arm without retraining anything else, and its other figures stay as they were."""
from __future__ import annotations

import json

import pytest
from test_reproduce import EPOCHS, REDUCED

from helpers import run_cli


@pytest.mark.slow
def test_a_hard_arm_is_trained_beside_the_kl_student_and_reported(tmp_path):
    config = tmp_path / "reduced.yaml"
    config.write_text(REDUCED.format(epochs=EPOCHS))
    out = tmp_path / "study"
    run_cli("reproduce", "--config", config, "--out", out, timeout=1800)
    before = json.loads((out / "study.json").read_text())
    assert "arms" not in before["aggregate"] and "Hard vs soft" not in (out / "study.md").read_text()

    config.write_text(REDUCED.format(epochs=EPOCHS) + "arms: [hard]\n")
    proc = run_cli("reproduce", "--config", config, "--out", out, timeout=1800)
    # only the arm's stages ran: its training and its extraction
    assert proc.stderr.count("kdstream distill") == 1 and "--loss hard" in proc.stderr, proc.stderr[-3000:]
    seed = out / "seed-0"
    hard, kl = (json.loads((seed / r / "train_summary.json").read_text()) for r in ("student_hard", "student"))
    assert hard["steps"] == kl["steps"] and hard["examples"] == kl["examples"]
    assert "loss: hard" in (seed / "student_hard" / "options.yaml").read_text()
    study = json.loads((out / "study.json").read_text())
    figs = study["seeds"][0]
    from kdstream.analysis.compare import memorized_ids

    h, _ = memorized_ids(seed / "eval" / "student_hard")
    t, b = (memorized_ids(seed / "eval" / r)[0] for r in ("teacher", "baseline"))
    arm = figs["arms"]["student_hard"]
    assert arm == {"memorized": len(h), "teacher_only_inherited": len(h & (t - b)), "teacher_only": len(t - b),
                   "also_by_baseline": len(h & b), "baseline": len(b)}
    assert figs["arms"]["student"]["memorized"] == figs["memorized"]["student"]
    assert "student_hard" in figs["windows"]["roles"]
    # the paper's findings are those of the run without the arm
    assert study["findings"] == before["findings"]
    md = (out / "study.md").read_text()
    assert "## Hard vs soft targets" in md and "hard student (teacher top-1)" in md
    assert "What the paper's framing predicts" in md and "What this run finds" in md
