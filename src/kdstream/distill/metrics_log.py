"""Training metrics: one JSON line per optimizer step in ``metrics.jsonl`` (the record of a run,
used by tests and the demo) and, when the ``tensorboard`` package is installed, the same scalars
as TensorBoard events under ``tensorboard/``."""
from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be redone)."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool) -> None:
        self._jsonl = (run_dir / METRICS_FILE).open("a")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL only
                return
            # purge_step hides events a killed run wrote after the checkpoint we resume from.
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step or None)

    def write(self, record: dict) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key.replace("eval_", "eval/") if key.startswith("eval_") else f"train/{key}",
                                        value, record["step"])

    def flush(self) -> None:
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
