"""What the command line prints and how a command's failure becomes one line and an exit code.

Shared by ``migrator`` and ``migrator fleet``. Markup is off by default: names, commands and errors carry square
brackets ("[/x]", "s/[abc]/x/") that rich would take for tags (and crash on, or drop); a print that colours
something says ``markup=True`` and escapes the rest.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from migrator.errors import ExitCode, MigratorError

out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

T = TypeVar("T")

#: An OSError with one of these numbers means the path given cannot name a file: bad input, not the machine.
_BAD_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR}


def fail(text: str, code: ExitCode) -> typer.Exit:
    """Prints ``error: text`` (the word in red) and returns the exit to raise."""
    err.print(f"[red]error:[/red] {escape(text)}", markup=True)
    return typer.Exit(int(code))


def guard(fn: Callable[[], T]) -> T:
    """Runs a command body: never a traceback. A MigratorError becomes one line and its own exit code; a path
    that cannot name a file is bad input (2); anything else the machine or a defect (1), in one line."""
    try:
        return fn()
    except MigratorError as exc:
        raise fail(exc.one_line(), exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(int(ExitCode.FAILED)) from None
    except (typer.Exit, typer.Abort):
        raise
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        if exc.errno in _BAD_PATH_ERRNOS:
            raise fail(f"{exc.strerror or exc}{where}", ExitCode.INVALID_INPUT) from None
        # the machine, not the input: a full disk, a permission, a read-only file system
        raise fail(f"{exc.strerror or exc}{where} — check the path, its permissions and the free space, then run "
                   "again", ExitCode.FAILED) from None
    except Exception as exc:  # a library's own error (the Temporal SDK, a driver): one line, the log has the rest
        logging.getLogger("migrator").debug("command failed", exc_info=True)
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise fail(f"{type(exc).__name__}: {detail}", ExitCode.FAILED) from None
