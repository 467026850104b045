"""The tests' fork server for `python -m kdstream ARGS`: one process imports the CLI's heavy
dependencies once (torch, transformers, zarr, scikit-learn, kdstream's modules) and runs each
command in a fresh fork of itself.

Why: the suite runs ~180 commands, and a cold `python -m kdstream` spends seconds importing before
it reads its first argument; on a 2-core machine those imports were a large share of `make test`.
A fork is still a process of its own: its own exit code, stdout and stderr (files, read back by
``helpers.run_cli``), environment and working directory, and a crash or ``os._exit`` ends only it.
What a fork does not repeat is the import, so an import-time fault is caught by the tests that run
the installed console scripts (tests/test_install.py) and the fault suite's own subprocesses.

Protocol (one JSON object per line): the server prints ``{"ready": true}`` once its imports are
done, then per request ``{"args", "env", "cwd", "stdout", "stderr", "timeout"}`` answers
``{"returncode": int}`` or ``{"timeout": true}`` (the fork's process group is killed). It exits at
the end of its input.

Fork safety: nothing here starts a Python thread or runs torch before forking (checked at start-up),
so a fork has the state a fresh interpreter has after the same imports. The imports do start native
worker threads (OpenBLAS's pools for numpy and scipy, pyarrow's jemalloc background thread); those
libraries re-create them in a fork (pthread_atfork), as DataLoader's forked workers rely on.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

# What `kdstream` commands import; vLLM is not among them (it sets up its own process machinery
# at import, and a command that runs an engine spends far longer in it than in the import).
PRELOAD = (
    "numpy", "torch", "torch.distributed", "transformers", "transformers.models.gpt_neox.modeling_gpt_neox",
    "tokenizers", "safetensors.torch", "zarr", "numcodecs", "fsspec", "sklearn.linear_model", "yaml", "click",
    "kdstream.cli",
)


def _run_child(request: dict) -> None:
    """In the fork: become `python -m kdstream ARGS` with the request's files, environment and cwd."""
    os.setpgrp()  # its own process group: a timeout kills it and whatever it started
    signal.signal(signal.SIGINT, signal.default_int_handler)
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((devnull, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
    import runpy

    sys.argv = ["-m", *request["args"]]  # run_module puts the module's path in argv[0], as `-m` does
    _run_and_exit(runpy.run_module, "kdstream", run_name="__main__", alter_sys=True)


def _run_and_exit(fn, *args, **kwargs) -> None:
    """Run the command and end the fork as the interpreter ends a program, minus the teardown of
    every module (seconds with torch loaded): join threads, run atexit, flush, ``os._exit``."""
    import atexit
    import threading
    import traceback

    try:
        fn(*args, **kwargs)
        code = 0
    except SystemExit as exc:  # sys.exit(None | int) is the code; anything else is printed, code 1
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    threading._shutdown()  # the interpreter's own first step at exit: wait for non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"returncode": os.waitstatus_to_exitcode(status)}
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return {"timeout": True}
        time.sleep(0.02)


def main() -> None:
    import importlib

    sys.path[0] = os.getcwd()  # as under `python -m`: the working directory first, not tests/
    for name in PRELOAD:
        importlib.import_module(name)
    import threading

    if threading.active_count() != 1:  # a fork copies only this thread: refuse rather than hand out broken state
        raise SystemExit(f"cli_forkserver: {threading.active_count()} Python threads after the imports; not forking")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(request)  # never returns: the fork ends in os._exit
        print(json.dumps(_wait(pid, request["timeout"])), flush=True)


if __name__ == "__main__":
    main()
