"""options.command_argv: the argv a study stage runs is parsed by the command's own CLI back to
the options dataclass it was rendered from (nested engine flags, parse fields, pairs, repeats)."""
from __future__ import annotations

import pytest

from kdstream.analysis.classify_run import ClassifyRunOptions
from kdstream.analysis.report import ReportOptions
from kdstream.cli.analysis import classify, report
from kdstream.cli.distill import distill
from kdstream.cli.extract import extract_eval
from kdstream.cli.options import build
from kdstream.cli.precompute import precompute_logits
from kdstream.distill.trainer import DistillOptions
from kdstream.engines.vllm import EngineOptions
from kdstream.extract.run import ExtractOptions
from kdstream.options import command_argv
from kdstream.precompute.runner import PrecomputeOptions

CASES = [
    (distill, DistillOptions(model="m", out="o", dataset="c.jsonl", loss="ce", lr=7e-4, seed=3, resume=True,
                             max_examples=100, verify_store=False)),
    (distill, DistillOptions(model="m", out="o", logits_store="t.zarr", temperature=1.5, exclude="x.txt",
                             cross_tokenizer="alm")),
    (precompute_logits, PrecomputeOptions(model="t", dataset="c.jsonl", out="t.zarr", top_k=16, seq_len=64,
                                          engine=EngineOptions(seed=2, dtype="float32", enforce_eager=False))),
    (extract_eval, ExtractOptions(model="m", out="e", logits_store="t.zarr", prefix_len=(32, 48), suffix_len=16,
                                  method="fast", backend="hf", features=True)),
    (classify, ClassifyRunOptions(student_eval="s", teacher_features="tf", baseline_features="bf", out="c",
                                  filter=True, target_recall=0.9)),
    (report, ReportOptions(teacher_eval="t", baseline_eval="b", student_eval="s", out="r",
                           prefix_eval=("student=e1", "teacher=e2"))),
]


@pytest.mark.parametrize("command,options", CASES, ids=lambda c: getattr(c, "name", ""))
def test_rendered_argv_parses_back_to_the_options(command, options):
    argv = command_argv(command.name, options)
    assert argv[0] == command.name
    params = command.make_context(command.name, argv[1:]).params
    assert build(type(options), params) == options


def test_only_what_differs_from_the_defaults_is_written():
    argv = command_argv("distill", DistillOptions(model="m", out="o", logits_store="t", seed=0, epochs=4))
    assert argv == ["distill", "--model", "m", "--out", "o", "--logits-store", "t"]


def test_extra_flags_come_last():
    argv = command_argv("distill", DistillOptions(model="m", out="o", logits_store="t"), ("--loss-chunk", "0"))
    assert argv[-2:] == ["--loss-chunk", "0"]
