"""Run `python -m kdstream ARGS` as forks of one process that imported kdstream's heavy
dependencies once (torch, transformers, zarr, scikit-learn, kdstream's modules).

Why: a cold `python -m kdstream` spends seconds importing before it reads its first argument
(docs/benchmarks.md, "Fork server"). `kdstream reproduce` runs ~16 stage commands per seed
(study/stages.py) and the test suite ~180 (tests/helpers.run_cli): importing once saves most of
their start-up. ``KDSTREAM_FORKSERVER=0`` runs a fresh interpreter per command instead.

A fork is still a process of its own: its own exit code, stdout and stderr, environment and
working directory, and a crash or ``os._exit`` ends only it. What a fork does not repeat is the
import, so an import-time fault shows in the commands that run as fresh interpreters (the
installed console scripts, torchrun's ranks).

Protocol, one JSON object per line over two pipes (the server's stdout and stderr stay its
client's, which a request may keep for the fork): the server writes ``{"ready": true}`` once its
imports are done; then each request ``{"args", "env", "cwd", "stdout", "stderr", "timeout",
"own_group"}`` (``stdout``/``stderr``: a file path, or null for the server's own) is answered
``{"returncode": int}`` or, past ``timeout`` seconds, ``{"timeout": true}`` after the fork's process
group is killed (``own_group``: the fork leads a group of its own, so that kill reaches whatever it
started; without it the fork stays in its client's group, where a terminal's Ctrl-C reaches it as it
reaches a child process). The server exits at the end of its requests.

Fork safety: the server starts no Python thread and runs no torch operation before forking
(checked at start-up), so a fork has the state a fresh interpreter has after the same imports. The
imports do start native worker threads (OpenBLAS's pools for numpy and scipy, pyarrow's jemalloc
background thread); those libraries re-create them in a fork (pthread_atfork), as DataLoader's
forked workers rely on.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

# What `kdstream` commands import (and vLLM where that is safe: _preload_vllm).
PRELOAD = (
    "numpy", "torch", "torch.distributed", "transformers", "transformers.models.gpt_neox.modeling_gpt_neox",
    "tokenizers", "safetensors.torch", "zarr", "numcodecs", "fsspec", "sklearn.linear_model", "yaml", "click",
    "kdstream.cli",
)
ENABLED_VAR = "KDSTREAM_FORKSERVER"  # "0": every command a fresh interpreter


def enabled() -> bool:
    return os.environ.get(ENABLED_VAR, "1") != "0"


class ForkServerError(RuntimeError):
    """The server did not start, or stopped while answering."""


class ForkServer:
    """The client end: starts the server (a fresh interpreter) and sends it one request at a time."""

    def __init__(self, env: dict | None = None) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", "kdstream.forkserver", str(req_r), str(rep_w)],
                                     pass_fds=(req_r, rep_w), stdin=subprocess.DEVNULL, env=env)
        os.close(req_r)
        os.close(rep_w)
        self.requests = os.fdopen(req_w, "w")
        self.replies = os.fdopen(rep_r)
        if json.loads(self.replies.readline() or "{}").get("ready") is not True:
            self.close()
            raise ForkServerError(f"the fork server did not start (exit {self.proc.returncode})")

    def run(self, args: list[str], *, env: dict, cwd: str, stdout: str | None = None, stderr: str | None = None,
            timeout: float | None = None, own_group: bool = False) -> int:
        """The exit code of `python -m kdstream ARGS` run as a fork; subprocess.TimeoutExpired
        past ``timeout`` (the fork killed). ``stdout``/``stderr``: a file, or None for this process's."""
        request = {"args": [str(a) for a in args], "env": env, "cwd": cwd, "stdout": stdout, "stderr": stderr,
                   "timeout": timeout, "own_group": own_group}
        try:
            self.requests.write(json.dumps(request) + "\n")
            self.requests.flush()
        except BrokenPipeError:
            raise ForkServerError(f"the fork server stopped (exit {self.proc.wait()})") from None
        reply = json.loads(self.replies.readline() or "{}")
        if reply.get("timeout"):
            raise subprocess.TimeoutExpired([sys.executable, "-m", "kdstream", *request["args"]], timeout)
        if "returncode" not in reply:
            raise ForkServerError(f"the fork server stopped (exit {self.proc.wait()})")
        return reply["returncode"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        for pipe in (self.requests, self.replies):
            try:
                pipe.close()
            except OSError:  # the server already gone: nothing left to flush
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_SHARED: list[ForkServer] = []  # this process's server once started


def shared(env: dict | None = None) -> ForkServer:
    """This process's fork server, started on first use (or again if it stopped); closed at exit.
    ``env``: the server's own environment (each request brings the fork's)."""
    if _SHARED and not _SHARED[0].alive():
        _SHARED.pop().close()
    if not _SHARED:
        import atexit

        _SHARED.append(ForkServer(env))
        atexit.register(_close_shared)
    return _SHARED[0]


def _close_shared() -> None:
    while _SHARED:
        _SHARED.pop().close()


# ---- the server -------------------------------------------------------------------------------

def _run_child(request: dict) -> None:
    """In the fork: become `python -m kdstream ARGS` with the request's files, environment and cwd."""
    if request.get("own_group"):
        os.setpgrp()  # a timeout kills it and whatever it started
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the server ignores it; a command does not
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for name, target in (("stdout", 1), ("stderr", 2)):
        if request.get(name) is not None:
            fd = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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


def _wait(pid: int, timeout: float | None, own_group: bool) -> dict:
    if timeout is None:
        return {"returncode": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"returncode": os.waitstatus_to_exitcode(status)}
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL) if own_group else os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return {"timeout": True}
        time.sleep(0.02)


def _preload_vllm() -> None:
    """vLLM as well (seconds of import per engine command) where torch is a CPU build:
    with CUDA, its import may initialise the driver, which a fork cannot inherit. Its import-time
    settings (the logging level) are then the server's environment's, with kdstream's defaults."""
    import torch

    from kdstream.engines.vllm import import_vllm
    from kdstream.errors import KdError

    if torch.version.cuda is None and torch.version.hip is None:
        try:
            import_vllm()
        except KdError:  # not installed: the commands that need it say so themselves
            pass


def serve(requests_fd: int, replies_fd: int) -> None:
    import importlib
    import threading

    for name in PRELOAD:
        importlib.import_module(name)
    _preload_vllm()
    if threading.active_count() != 1:  # a fork copies only this thread: refuse rather than hand out broken state
        raise SystemExit(f"kdstream.forkserver: {threading.active_count()} Python threads after the imports; "
                         "not forking")
    # a terminal's Ctrl-C reaches the whole group: the fork it is meant for stops, the server waits
    # for it and then finds its client gone
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, replies = os.fdopen(requests_fd), os.fdopen(replies_fd, "w")
    try:
        replies.write(json.dumps({"ready": True}) + "\n")
        replies.flush()
        for line in requests:
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os.close(requests_fd)  # the protocol's pipes are the server's, not the command's
                os.close(replies_fd)
                _run_child(request)  # never returns: the fork ends in os._exit
            replies.write(json.dumps(_wait(pid, request.get("timeout"), bool(request.get("own_group")))) + "\n")
            replies.flush()
    except BrokenPipeError:  # the client is gone
        pass
    os._exit(0)  # nothing to tear down: skip the seconds of unloading torch


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
