"""Output directories that only ever look finished when they are, and that never cost a user a
directory kdstream did not make.

Work goes into ``OUT.partial`` and is renamed to ``OUT`` at the end (a crash leaves only the
``.partial`` directory behind). Every directory a command makes carries an owner file,
``.kdstream-output.json`` (``{"command": …, "files": {path: size}}``, the files listed when the
output is published), and a command only ever deletes or replaces a directory whose owner file
names that same command and which holds nothing but the files listed there: a store, a model
directory, another command's output, a folder with a copied owner file or any other folder at
``--out`` is refused with one line, before any work, and again at the end (in case something
appeared there meanwhile).
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import stat
from pathlib import Path

from kdstream.errors import KdError

OWNER_FILE = ".kdstream-output.json"
_UNLINK = "remove the link, or choose another --out"


def partial_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".partial")


def _record(directory: Path) -> dict | None:
    try:
        data = json.loads((Path(directory) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def owner(directory: Path) -> str | None:
    """The command recorded in ``directory``'s owner file; None when it has none (not ours)."""
    record = _record(directory)
    return None if record is None else record["command"]


def _listing(directory: Path) -> dict[str, int]:
    """{relative path: size} of the regular files under ``directory``, the owner file aside; a
    symbolic link or any other special entry is listed with size -1 (never one of ours)."""
    root = Path(directory)
    found: dict[str, int] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in [*files, *(d for d in dirs if (here / d).is_symlink())]:
            path = here / name
            rel = path.relative_to(root).as_posix()
            if rel != OWNER_FILE:
                st = path.lstat()
                found[rel] = st.st_size if stat.S_ISREG(st.st_mode) else -1
    return found


def _foreign_files(directory: Path) -> list[str] | None:
    """The entries of ``directory`` its owner file does not list with their size (added or changed
    since the command published it); None when the owner file lists no files at all."""
    listed = (_record(directory) or {}).get("files")
    if not isinstance(listed, dict):
        return None
    return sorted(rel for rel, size in _listing(directory).items() if size < 0 or listed.get(rel) != size)


def _refuse_foreign(out: Path, command: str, then: str) -> None:
    """KdError unless ``out`` (an output of ``command``) holds exactly the files it wrote."""
    foreign = _foreign_files(out)
    if foreign is None:
        raise KdError(f"--out {out} has an owner file that lists no files (copied, or an older kdstream's): "
                      f"{then}delete it yourself if it is yours to discard, or choose another --out")
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise KdError(f"--out {out} holds files kdstream {command} did not write ({shown}): {then}move them "
                      "away, or choose another --out (kdstream never replaces what it did not create)")


def refuse_link(path: Path, what: str, fix: str = "pass the folder it points to, or another path") -> None:
    """KdError when ``path`` itself is a symbolic link: kdstream writes, renames and replaces real
    folders only (through a link it would replace the link, or write where the link points)."""
    if Path(path).is_symlink():
        raise KdError(f"{what} {path} is a symbolic link (to {os.readlink(path)}): {fix}")


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def check_output(out: Path, command: str, *, replace: bool) -> None:
    """Refuse, before any long work, an ``--out`` this command may not write.

    ``replace``: whether an earlier finished output of this same command may be replaced (the
    command's ``--overwrite``). A path that is a file, or a non-empty directory that this command
    did not make, is never replaced.
    """
    out = Path(out)
    refuse_link(out, "--out")
    refuse_link(partial_path(out), "--out's work folder", _UNLINK)
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise KdError(f"--out {out} is a file: pass a directory path (it is created)")
    if out.is_dir() and not _is_empty_dir(out):
        made_by = owner(out)
        if made_by != command:
            what = f"kdstream {made_by}'s output" if made_by else "a directory kdstream did not write"
            raise KdError(f"--out {out} already exists and is {what}: choose another --out "
                          "(kdstream never replaces what it did not create)")
        _refuse_foreign(out, command, "")
        if not replace:
            raise KdError(f"{out} already holds a finished {command} output: pass --overwrite to replace it")
    partial = partial_path(out)
    if partial.exists() and (not partial.is_dir() or (not _is_empty_dir(partial) and owner(partial) != command)):
        raise KdError(f"{partial} exists and is not a leftover of kdstream {command}: move it away or choose "
                      "another --out")
    _check_writable(out.parent if not out.exists() else out)


def _check_writable(directory: Path) -> None:
    """The nearest existing ancestor of ``directory`` must accept new entries."""
    probe = Path(directory).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise KdError(f"cannot write under {probe} (permission denied or read-only): choose a writable --out")


def _mark(directory: Path, command: str, files: dict[str, int] | None = None) -> None:
    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    record = {"command": command, "created_at": stamp, **({"files": files} if files is not None else {})}
    (directory / OWNER_FILE).write_text(json.dumps(record) + "\n")


def fresh_partial(out: Path, command: str) -> Path:
    """An empty ``OUT.partial`` owned by ``command`` (a leftover of this command's crashed run is
    removed; anything else there is refused, see ``check_output``)."""
    partial = partial_path(out)
    refuse_link(partial, "--out's work folder", _UNLINK)
    if partial.exists():
        if owner(partial) != command and not _is_empty_dir(partial):
            raise KdError(f"{partial} exists and is not a leftover of kdstream {command}: move it away or choose "
                          "another --out")
        shutil.rmtree(partial)
    try:
        partial.mkdir(parents=True)
        _mark(partial, command)
    except OSError as exc:
        raise KdError(f"cannot create {partial} ({exc.strerror or exc}): choose a writable --out") from None
    return partial


def publish(partial: Path, out: Path, command: str) -> None:
    """Move the finished ``partial`` to ``out``; an earlier ``out`` is replaced only if this same
    command made it (an empty directory is replaced too). The old output is moved aside first and
    deleted last, so a crash never leaves neither. The owner file lists the files published."""
    out = Path(out)
    _mark(partial, command, _listing(partial))
    if out.is_symlink():
        raise KdError(f"--out {out} became a symbolic link during the run: the result stays in {partial}")
    if out.exists():
        if not out.is_dir():
            raise KdError(f"--out {out} became a file during the run: the result stays in {partial}")
        if not _is_empty_dir(out) and owner(out) != command:
            raise KdError(f"--out {out} appeared during the run and is not kdstream {command}'s output: "
                          f"the result stays in {partial}")
        if not _is_empty_dir(out):
            _refuse_foreign(out, command, f"the result stays in {partial}; ")
        old = out.with_name(f"{out.name}.replaced-{os.getpid()}")  # a name no one else uses
        try:
            out.rename(old)
        except OSError as exc:
            raise KdError(f"cannot replace {out} ({exc.strerror or exc}): the result stays in {partial}") from None
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return
    partial.rename(out)


def disk_error(exc: OSError) -> KdError | None:
    """A one-line KdError for the OS errors a user fixes themselves (disk full, read-only or
    permission-denied output location); None for others (bugs, network)."""
    hints = {errno.ENOSPC: "the disk is full: free space or choose another --out",
             errno.EDQUOT: "the disk quota is exceeded: free space or choose another --out",
             errno.EROFS: "the location is read-only: choose a writable --out",
             errno.EACCES: "permission denied: choose a writable --out"}
    if exc.errno in hints:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return KdError(f"cannot write{where}: {hints[exc.errno]}")
    return None
