"""`kdstream reproduce` on conversations that are not the project's own: the chatterbot-corpus
package's English dialogues (conversation_bench.py's corpus, all of its first N), with the study's
tiny models. Saves the study's figures, verdicts and stage seconds with the command, commit and
machine (benchmarks/results/NAME.json); with --grid, the `--calibrate` sweep's table instead.

The config is the embedded defaults with what conversations change (study/conversations.py):
--seq-len (a conversation, not a window), --suffix-len (chatterbot's answers are a sentence), and
the epochs given here (the defaults' were calibrated on text windows).

    python -m benchmarks.study_chat_bench --work DIR [--conversations 600] [--teacher-epochs 4]
        [--student-epochs 4] [--seeds 3 | --grid GRID.yaml] [--name NAME]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from benchmarks.conversation_bench import chatterbot_conversations
from benchmarks.miniature import run_reproduce
from benchmarks.results import save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="Holds the conversations, the config and the study (kept)")
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--suffix-len", type=int, default=8)
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--student-epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--grid", help="A --calibrate grid (YAML) instead of the study")
    parser.add_argument("--name", default="study_chat_bench", help="results/NAME.json")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "chatterbot.jsonl"
    rows = chatterbot_conversations(args.conversations)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"dataset": str(data), "examples": len(rows), "seq_len": args.seq_len, "suffix_len": args.suffix_len,
              "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
              "canary_counts": []}  # none on conversations: said here, not left to the note
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    if args.grid:
        out = work / "calibrate"
        cmd = run_reproduce("--calibrate", "--grid", args.grid, "--config", str(work / "config.yaml"),
                            "--out", str(out), "--seeds", str(args.seeds))
        figures = {"calibration": json.loads((out / "calibration.json").read_text()),
                   "grid": yaml.safe_load(Path(args.grid).read_text())}
    else:
        out = work / "study"
        cmd = run_reproduce("--config", str(work / "config.yaml"), "--out", str(out), "--seeds", str(args.seeds))
        study = json.loads((out / "study.json").read_text())
        figures = {"study": study, "study_md": (out / "study.md").read_text(),
                   "stage_seconds": {d.name: json.loads((d / "stage_seconds.json").read_text())
                                     for d in sorted(out.glob("seed-*"))}}
    figures.update(config=config, reproduce_command=" ".join(cmd[1:]), wall_s=round(time.perf_counter() - start, 1))
    save(args.name, figures)


if __name__ == "__main__":
    main()
