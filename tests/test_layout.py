"""The package's import rules, read from the source (AST, nothing imported):

- no module imports a ``_private`` name from another package;
- extract/ imports nothing from analysis/ or study/ (data flows extract → analysis → study);
- storage/ imports nothing from engines/, distill/, extract/ or analysis/ (it loads no model);
- only engines/ loads a model: no ``AutoModel*`` / ``*ForCausalLM`` / ``type(net)`` ``.from_pretrained``
  and no vLLM ``LLM`` elsewhere;
- text/ (tokenizers, their match rule, bytes per token, alignment, chat) sits at the bottom: it
  imports no other kdstream package; only text/ loads a tokenizer (``*Tokenizer*.from_pretrained``)
  and only text/ compares tokenizer fingerprints (``text.match.tokenizers_match`` everywhere else);
- only the CLI (cli*.py, cli/) imports click.

And one definition of each text helper that used to have twins (``ONE_DEFINITION``), and no import
cycle among kdstream's modules through their module-level imports (``if TYPE_CHECKING:`` ones
included; an import inside a function is how a module reaches one above it lazily).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kdstream"
FORBIDDEN = {  # package -> packages it must not import from
    "extract": {"analysis", "study"},
    "storage": {"engines", "distill", "extract", "analysis"},
    "text": {"data", "storage", "precompute", "distill", "extract", "analysis", "study", "cli", "engines", "torch"},
}
# module-level functions defined exactly once in the package
ONE_DEFINITION = ("load_tokenizer", "tokenizer_fingerprint", "has_tokenizer", "tokenizers_match", "teacher_tokenizer",
                  "store_tokenizer", "bits_per_byte", "byte_vocab", "token_byte_lengths")
MODEL_CLASS = re.compile(r"^AutoModel|ForCausalLM$|LMHeadModel$|Model$")


def package_of(parts: tuple[str, ...]) -> str:
    """'extract' for kdstream/extract/run.py; '' for a module at the package root (cli.py)."""
    return parts[0] if len(parts) > 1 else ""


def imported(node: ast.AST, parts: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """(module, name or None) for one import statement; relative imports resolved against ``parts``."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names]
    if isinstance(node, ast.ImportFrom):
        module = node.module or ""
        if node.level:
            base = ["kdstream", *parts[:-1]][: len(parts) - node.level + 1]
            module = ".".join([*base, module] if module else base)
        return [(module, a.name) for a in node.names]
    return []


def is_cli(parts: tuple[str, ...]) -> bool:
    return parts[0] == "cli" or parts[0].startswith("cli_") or parts[0] == "cli.py"


def loads_a_model(node: ast.AST) -> bool:
    """``X.from_pretrained(...)`` with X a model class or ``type(...)``/``….__class__``; ``LLM(...)``."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    if isinstance(f, ast.Attribute) and f.attr == "from_pretrained":
        owner = f.value
        if isinstance(owner, ast.Name):
            return bool(MODEL_CLASS.search(owner.id))
        if isinstance(owner, ast.Attribute):
            return owner.attr == "__class__" or bool(MODEL_CLASS.search(owner.attr))
        return isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "type"
    return (isinstance(f, ast.Name) and f.id == "LLM") or (isinstance(f, ast.Attribute) and f.attr == "LLM")


def loads_a_tokenizer(node: ast.AST) -> bool:
    """``X.from_pretrained(...)`` with X a tokenizer class (AutoTokenizer, PreTrainedTokenizerFast …)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained"):
        return False
    owner = node.func.value
    name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
    return "Tokenizer" in name


def compares_tokenizer_fingerprints(node: ast.AST) -> bool:
    """``==`` / ``!=`` with a ``tokenizer_fingerprint(...)`` call or a store's ``"tokenizer"`` attribute
    on a side: the match rule spelled out again instead of asked of text.match."""
    if not isinstance(node, ast.Compare) or not all(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
        return False
    for side in [node.left, *node.comparators]:
        for sub in ast.walk(side):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "tokenizer_fingerprint":
                return True
            if isinstance(sub, ast.Constant) and sub.value == "tokenizer":
                return True
    return False


def problems(source: str, parts: tuple[str, ...]) -> list[str]:
    """Every broken rule in one module's ``source``; ``parts``: its path under src/kdstream."""
    name = "/".join(parts)
    pkg = package_of(parts)
    found = []
    for node in ast.walk(ast.parse(source)):
        for module, item in imported(node, parts):
            top = module.split(".")[0]
            if top == "click" and not is_cli(parts):
                found.append(f"{name} imports click outside the CLI")
            if top == "vllm" and item == "LLM" and pkg != "engines":
                found.append(f"{name} imports vllm.LLM outside engines/")
            if top != "kdstream":
                continue
            target = module.split(".")[1:]
            target_pkg = target[0] if target and (SRC / target[0]).is_dir() else ""
            if item is not None and item.startswith("_") and target_pkg != pkg:
                found.append(f"{name} imports the private {item} from {module}")
            if target_pkg in FORBIDDEN.get(pkg, ()):
                found.append(f"{name} imports {module}: {pkg}/ must not depend on {target_pkg}/")
        if pkg != "engines" and loads_a_model(node):
            found.append(f"{name}:{node.lineno} loads a model outside engines/ (use kdstream.engines)")
        if pkg != "text" and loads_a_tokenizer(node):
            found.append(f"{name}:{node.lineno} loads a tokenizer outside text/ (use text.tokenizers.load_tokenizer)")
        if pkg != "text" and compares_tokenizer_fingerprints(node):
            found.append(f"{name}:{node.lineno} compares tokenizer fingerprints outside text/ (use "
                         "text.match.tokenizers_match)")
    return found


def test_the_package_keeps_its_import_rules():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        found += problems(path.read_text(), path.relative_to(SRC).parts)
    assert not found, "\n".join(found)


def test_each_text_helper_is_defined_once():
    where: dict[str, list[str]] = {name: [] for name in ONE_DEFINITION}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name in where:
                where[node.name].append(str(path.relative_to(SRC)))
    assert all(len(files) == 1 for files in where.values()), where


def test_the_device_choices_are_written_once():
    """--device's choices live in kdstream.options (DEVICES, check_device), not in each command."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List)) and [getattr(e, "value", None) for e in node.elts] == \
                    ["auto", "cpu", "cuda"]:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert [f.split(":")[0] for f in found] == ["options.py"], found


def module_name(path: Path) -> str:
    """'kdstream.distill.trainer' for src/kdstream/distill/trainer.py; a package's __init__ is the package."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The kdstream modules in ``modules`` that module ``name`` imports outside its functions and
    classes; ``from pkg import sub`` counts as importing the submodule ``pkg.sub`` only."""
    out: set[str] = set()

    def visit(body) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join([*package, base] if base else package)
                subs = {f"{base}.{a.name}" for a in node.names} & modules
                out.update(subs)
                if len(subs) < len(node.names):
                    out.add(base)
            else:  # if / try blocks at module level (``if TYPE_CHECKING:``)
                for block in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, block, None) or [])

    visit(ast.parse(source).body)
    return (out & modules) - {name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle a depth-first walk of ``graph`` (module -> modules it imports) meets, as a path."""
    state: dict[str, int] = {}  # 1: on the walk's path, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def walk(u: str) -> None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycles.append(path[path.index(v):] + [v])
            elif v not in state:
                walk(v)
        path.pop()
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            walk(u)
    return cycles


def test_no_import_cycle_within_kdstream():
    paths = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {name: module_level_imports(p.read_text(), name, p.name == "__init__.py", set(paths))
             for name, p in paths.items()}
    cycles = import_cycles(graph)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_cycle_through_type_checking_imports():
    names = {"kdstream.distill.trainer", "kdstream.distill.run_state"}
    trainer = module_level_imports("from kdstream.distill.run_state import Run\n", "kdstream.distill.trainer", False,
                                   names)
    state = module_level_imports("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                 "    from kdstream.distill.trainer import DistillOptions\n",
                                 "kdstream.distill.run_state", False, names)
    lazy = module_level_imports("def f():\n    from kdstream.distill.trainer import train\n",
                                "kdstream.distill.run_state", False, names)
    assert import_cycles({"kdstream.distill.trainer": trainer, "kdstream.distill.run_state": state})
    assert not import_cycles({"kdstream.distill.trainer": trainer, "kdstream.distill.run_state": lazy})


@pytest.mark.parametrize("parts,source", [
    (("study", "summary.py"), "from kdstream.analysis.plots import _save\n"),
    (("extract", "run.py"), "from kdstream.analysis.features_run import run_features\n"),
    (("extract", "run.py"), "def f():\n    import kdstream.study.protocol\n"),
    (("storage", "stats.py"), "from kdstream.engines.hf import load_causal_lm\n"),
    (("storage", "stats.py"), "from ..distill import losses\n"),
    (("analysis", "features_run.py"),
     "from transformers import AutoModelForCausalLM as A\nAutoModelForCausalLM.from_pretrained('m')\n"),
    (("distill", "checkpoint.py"), "w = type(net).from_pretrained(path)\n"),
    (("precompute", "vllm_backend.py"), "from vllm import LLM\n"),
    (("extract", "vllm_backend.py"), "import vllm\nllm = vllm.LLM(model='m')\n"),
    (("options.py",), "import click\n"),
    (("text", "align.py"), "from kdstream.storage.reader import open_store\n"),
    (("text", "chat.py"), "def f():\n    from kdstream.data.corpus import load_corpus\n"),
    (("extract", "run.py"), "from transformers import AutoTokenizer\nAutoTokenizer.from_pretrained('m')\n"),
    (("distill", "sources.py"), "ok = tokenizer_fingerprint(a)['sha256'] == tokenizer_fingerprint(b)['sha256']\n"),
    (("analysis", "features_run.py"), "if sha != store.attrs.get('tokenizer', {}).get('sha256'):\n    pass\n"),
])
def test_each_rule_catches_its_violation(parts, source):
    assert problems(source, parts)


@pytest.mark.parametrize("parts,source", [
    (("distill", "student.py"), "from transformers import AutoConfig\nAutoConfig.from_pretrained('m')\n"),
    (("engines", "hf.py"), "from transformers import AutoModelForCausalLM\nAutoModelForCausalLM.from_pretrained('m')\n"),
    (("cli.py",), "import click\nfrom kdstream.cli_common import config_option\n"),
    (("extract", "run.py"), "from kdstream.extract.backends import _helper\n"),
    (("analysis", "files.py"), "from kdstream.extract.results import RESULTS_FILE\n"),
    (("text", "tokenizers.py"), "from transformers import AutoTokenizer\nAutoTokenizer.from_pretrained('m')\n"),
    (("storage", "tokenizer_files.py"), "from kdstream.text.match import tokenizers_match\n"),
    (("storage", "verify.py"), "bad = sha256(data) != entry.get('sha256')\n"),
])
def test_allowed_imports_pass(parts, source):
    assert problems(source, parts) == []
