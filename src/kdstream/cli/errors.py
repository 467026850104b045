"""How a command ends: a user error (KdError, a full or read-only disk) as one line with exit
status 2, an interrupt as 130; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import re
import sys

import click

from kdstream.errors import KdError


def run_command(command: click.Command) -> None:
    try:
        command.main(standalone_mode=False)
    except KdError as exc:
        click.echo(f"error: {short_line(str(exc))}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # disk full, read-only or forbidden output location: the user's to fix
        known = io_error(exc)
        if known is None:
            raise
        click.echo(f"error: {known}", err=True)
        sys.exit(2)


MAX_LINE = 1000  # characters of an error line: its start names the problem, its end the fix


def short_line(message: str) -> str:
    """``message`` with its middle cut when it is longer than MAX_LINE (an echoed value, a long list)."""
    if len(message) <= MAX_LINE:
        return message
    return message[: MAX_LINE * 2 // 3] + " … " + message[-(MAX_LINE // 3):]


# How libraries that do their own I/O report a failed write: Rust (tokenizers) "... (os error 28)",
# Arrow "... [errno 28] ...", and the C++ iostream failure of a tokenizer save ("basic_ios::clear").
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[errno (\d+)\]", re.IGNORECASE)


def io_error(exc: BaseException) -> KdError | None:
    """One line for an OS error the user fixes themselves (disk full, read-only, forbidden), found
    in ``exc``, in the exceptions it wraps (zarr, pyarrow, a worker process) or in a library's
    message that carries only the text; None for anything else (a bug: keep the traceback)."""
    from kdstream.outputs import disk_error

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        known = disk_error(exc) if isinstance(exc, OSError) else None
        match = _ERRNO_IN_TEXT.search(str(exc))
        if known is None and match:
            known = disk_error(OSError(int(match.group(1) or match.group(2)), str(exc)))
        if known is None and "basic_ios::clear" in str(exc):
            known = KdError("cannot write: a library's file write failed (basic_ios::clear), usually because the "
                            "disk is full or read-only: free space or choose another --out")
        if known is not None:
            return known
        exc = exc.__cause__ or exc.__context__
    return None
