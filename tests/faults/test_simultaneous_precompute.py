"""Two precompute-logits on the same --out started at the same instant, five times over: in each
round exactly one proceeds and the other exits 2 naming it, and the store is the one a single run
writes. Real processes: forks of one launcher that did the imports once, each sleeping until the
same wall-clock instant, then running `python -m kdstream` as a user does."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import zarr

from helpers import precompute_args, run_cli, tree_digest

ROUNDS = 5

# argv: ROUNDS DIR ARGS… (ARGS hold the literal OUT where --out goes). Prints [[code, code], …].
LAUNCHER = """
import json, os, runpy, sys, time
import torch, transformers, zarr, kdstream.cli  # noqa: F401  imported once, before forking
rounds, root, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
results = []
for r in range(rounds):
    start, pids = time.time() + 0.5, []
    for c in range(2):
        pid = os.fork()
        if pid == 0:
            for name, fd in (("out", 1), ("err", 2)):
                os.dup2(os.open(f"{root}/r{r}-{c}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            time.sleep(max(0.0, start - time.time()))
            sys.argv = ["-m", *[a.replace("OUT", f"{root}/r{r}.zarr") for a in args]]
            try:
                runpy.run_module("kdstream", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    results.append([os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids])
print(json.dumps(results))
"""

def _attrs(store) -> dict:
    """The attributes, less what differs between two runs of one command into two paths: when
    (and the checksum of the attributes that hold it), and --out."""
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    for key in ("created_at", "precompute_seconds"):
        attrs.pop(key)
    attrs["manifest"].pop("finalized_at")
    attrs["options"].pop("out")
    attrs["integrity"] = attrs["integrity"]["manifest_sha256"]
    return attrs


def _content(store) -> dict:
    return {k: v for k, v in tree_digest(store).items() if k != "zarr.json"}


@pytest.mark.slow
def test_two_runs_started_together_one_proceeds_the_other_is_refused(tmp_path, teacher_dir, corpus_file):
    args = precompute_args(teacher_dir, corpus_file, "OUT", "--max-examples", 12, "--chunk-rows", 3, "--backend", "hf")
    single = tmp_path / "single.zarr"
    run_cli(*[single if a == "OUT" else a for a in args])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, str(ROUNDS), str(tmp_path), *map(str, args)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = json.loads(proc.stdout.strip().splitlines()[-1])
    for r, codes in enumerate(rounds):
        err = [(tmp_path / f"r{r}-{c}.err").read_text() for c in range(2)]
        assert sorted(codes) == [0, 2], (r, codes, err)
        winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
        errors = [line for line in err[loser].splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in err[loser], err[loser]
        assert "another precompute-logits" in errors[0] and str(tmp_path / f"r{r}.zarr") in errors[0], errors[0]
        summary = json.loads((tmp_path / f"r{r}-{winner}.out").read_text().splitlines()[-1])
        assert summary["complete"] and summary["chunks_written"] == 4, summary
        store = tmp_path / f"r{r}.zarr"
        assert _content(store) == _content(single) and _attrs(store) == _attrs(single), r
