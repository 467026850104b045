"""The CLI is generated from the option dataclasses: these tests keep the two from drifting (every
flag's default is the field's default, every field has a flag) and keep --help fast."""
import dataclasses
import json
import subprocess
import sys

import click
import pytest

from kdstream.analysis.classify_run import ClassifyRunOptions
from kdstream.analysis.features_run import FeaturesOptions
from kdstream.analysis.report import ReportOptions
from kdstream.cli import kdstream as kdstream_group
from kdstream.cli.options import build, option_fields, options_from
from kdstream.cli.study import STUDY_FLAGS
from kdstream.distill.options import DistillOptions
from kdstream.errors import KdError
from kdstream.extract.run import ExtractOptions
from kdstream.precompute.runner import PrecomputeOptions
from kdstream.study.config import StudyConfig, load_study_config

# command -> (its options dataclass, flags a valid minimal call adds beyond the required ones)
COMMANDS = {
    "precompute-logits": (PrecomputeOptions, []),
    "distill": (DistillOptions, ["--logits-store", "store"]),
    "extract-eval": (ExtractOptions, ["--model", "model", "--logits-store", "store"]),
    "features": (FeaturesOptions, []),
    "classify": (ClassifyRunOptions, []),
    "report": (ReportOptions, []),
}
NOT_FIELDS = {"config"}  # --config: read before the flags, not an option of the run
NOT_EXPOSED: dict[str, set[str]] = {name: set() for name in COMMANDS}  # fields deliberately without a flag
# commands whose flags map to no options dataclass (arguments + a few flags of their own)
WITHOUT_DATACLASS = {"compare", "eval merge", "store info", "store verify", "store finalize", "store stats",
                     "store card", "store tokenizer"}
HEAVY = ("torch", "vllm", "transformers", "sklearn", "matplotlib", "pandas")


def _command(path: str) -> click.Command:
    cmd = kdstream_group
    for part in path.split():
        cmd = cmd.commands[part]
    return cmd


def _all_commands(group: click.Group = kdstream_group, prefix: str = "") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        out += _all_commands(cmd, f"{path} ") if isinstance(cmd, click.Group) else [path]
    return out


def test_every_command_is_covered_here():
    assert set(_all_commands()) == set(COMMANDS) | WITHOUT_DATACLASS | {"reproduce", "demo"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_field_has_a_flag_and_no_flag_lacks_a_field(name):
    cls, _ = COMMANDS[name]
    flags = {p.name for p in _command(name).params if isinstance(p, click.Option)} - NOT_FIELDS
    fields = {o.name for o in option_fields(cls)}
    assert flags == fields - NOT_EXPOSED[name]
    required = {p.name for p in _command(name).params if isinstance(p, click.Option) and p.required}
    assert required == {o.name for o in option_fields(cls)
                        if o.default is dataclasses.MISSING and o.field.metadata.get("required", True)}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_flag_defaults_are_the_dataclass_defaults(name):
    """Parse a minimal command line (required flags only) and build the options: they must equal
    the dataclass built from the same required values, field by field (nested engine included)."""
    cls, extra = COMMANDS[name]
    cmd = _command(name)
    required = [p for p in cmd.params if isinstance(p, click.Option) and p.required]
    args = [arg for p in required for arg in (p.opts[0], p.name)] + extra
    ctx = cmd.make_context(name, args)
    from_cli = build(cls, ctx.params)
    given = {p.name: p.name for p in required} | {extra[i][2:].replace("-", "_"): extra[i + 1]
                                                   for i in range(0, len(extra), 2)}
    assert dataclasses.asdict(from_cli) == dataclasses.asdict(cls(**given))
    for p in cmd.params:  # and as --help shows them: the option's own default is the field's
        if isinstance(p, click.Option) and p.name not in NOT_FIELDS and not p.required:
            field = next(o for o in option_fields(cls) if o.name == p.name)
            parse = field.field.metadata.get("parse")
            shown = parse(p.default) if parse and p.default is not None else p.default
            expected = field.default if field.default is not dataclasses.MISSING else None
            assert shown == (expected if not isinstance(expected, tuple) or parse else tuple(expected)), p.name


def test_study_flags_override_study_config_fields_and_default_to_its_yaml():
    for name in ("reproduce", "demo"):
        cmd = _command(name)
        flags = {p.name: p for p in cmd.params if isinstance(p, click.Option)}
        assert set(flags) - {"out", "config_path", "calibrate", "grid_path", "find_regime", "max_points"} == set(STUDY_FLAGS)
        assert all(flags[f].default is None for f in STUDY_FLAGS)  # unset flags leave the YAML's value
        ctx = cmd.make_context(name, ["--out", "x"])
        overrides = {k: v for k, v in ctx.params.items()
                     if k not in ("out", "config_path", "calibrate", "grid_path", "find_regime", "max_points")}
        assert load_study_config(None, overrides) == StudyConfig()
        ctx = cmd.make_context(name, ["--out", "x", "--seeds", "3", "--eval-method", "fast"])
        overrides = {k: v for k, v in ctx.params.items()
                     if k not in ("out", "config_path", "calibrate", "grid_path", "find_regime", "max_points")}
        assert load_study_config(None, overrides) == StudyConfig(seeds=3, eval_method="fast")


@pytest.mark.parametrize("path", _all_commands())
def test_every_option_has_help(path):
    for p in _command(path).params:
        if isinstance(p, click.Option) and p.name not in ("help", "version"):
            assert p.help, f"{path} {p.opts[0]} has no help text"


@dataclasses.dataclass(frozen=True)
class _Inner:
    depth: int | None = dataclasses.field(default=None, metadata={"help": "optional int"})


@dataclasses.dataclass(frozen=True)
class _Toy:
    name: str = dataclasses.field(metadata={"help": "required"})
    quiet: bool = dataclasses.field(default=False, metadata={"help": "flag"})
    check: bool = dataclasses.field(default=True, metadata={"help": "on/off"})
    sizes: tuple[int, ...] = dataclasses.field(
        default=(1,), metadata={"help": "comma list", "parse": lambda v: tuple(int(x) for x in v.split(","))})
    tags: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "repeatable"})
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_generator_maps_each_field_shape_and_rebuilds_nested_options():
    @click.command()
    @options_from(_Toy)
    def toy(**kw):
        return build(_Toy, kw)

    flags = [p.opts[0] for p in toy.params]
    assert flags == ["--name", "--quiet", "--check", "--sizes", "--tags", "--depth"]
    assert toy.main(["--name", "a"], standalone_mode=False) == _Toy(name="a")
    got = toy.main(["--name", "a", "--quiet", "--no-check", "--sizes", "2,3", "--tags", "x", "--tags", "y",
                    "--depth", "4"], standalone_mode=False)
    assert got == _Toy(name="a", quiet=True, check=False, sizes=(2, 3), tags=("x", "y"), inner=_Inner(depth=4))
    with pytest.raises(click.MissingParameter):
        toy.main([], standalone_mode=False)


def test_a_bad_parsed_flag_is_a_one_line_error():
    with pytest.raises(KdError, match="--loss-chunk"):
        _command("distill").main(["--model", "m", "--out", "o", "--logits-store", "s", "--loss-chunk", "big"],
                                 standalone_mode=False)


def test_help_of_every_command_imports_no_torch_or_vllm():
    """--help builds every command's options from the dataclasses, which must not pull in torch,
    vLLM or the analysis stack."""
    code = (
        "import json, sys\n"
        "from kdstream.cli import kdstream\n"
        f"for path in {_all_commands()!r}:\n"
        "    try:\n"
        "        kdstream.main([*path.split(), '--help'], prog_name='kdstream', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Usage:") == len(_all_commands())
    assert json.loads(proc.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize("args", [["distill", "--help"], ["--help"]])
def test_python_dash_m_kdstream_runs_the_commands(args):
    """`python -m kdstream distill` (also what torchrun -m kdstream distill runs) reaches the command."""
    proc = subprocess.run([sys.executable, "-m", "kdstream", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Usage:" in proc.stdout and ("--loss-chunk" in proc.stdout if args[0] == "distill" else True)
