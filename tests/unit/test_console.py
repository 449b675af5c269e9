"""One guard for every command (``migrator`` and ``migrator fleet``): one line, the right exit code, no traceback,
brackets printed as written."""

from __future__ import annotations

import errno

import pytest
import typer

from migrator import console
from migrator.errors import InputError, LockHeld


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(("exc", "code", "words"), [
    (InputError("bad [/x] value", hint="fix it"), 2, "error: bad [/x] value — fix it"),
    (LockHeld("run r1 is locked by [host] pid 1"), 3, "error: run r1 is locked by [host] pid 1"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/x" * 300), 2, "error: File name too long: /x"),
    (OSError(errno.ENOSPC, "No space left on device", "/state"), 1, "free space"),
    (RuntimeError("a library's own [bold]error[/bold]\nsecond line"), 1,
     "error: RuntimeError: a library's own [bold]error[/bold]"),
    (KeyboardInterrupt(), 1, "interrupted"),
])
def test_every_failure_is_one_line_with_its_exit_code(exc: BaseException, code: int, words: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exit_:
        console.guard(lambda: _raise(exc))
    assert exit_.value.exit_code == code
    printed = capsys.readouterr().err
    assert words in printed
    assert "Traceback" not in printed and "second line" not in printed
    assert len(printed.strip().splitlines()) == 1


def test_the_fleet_commands_use_the_same_guard() -> None:
    from migrator.fleet import cli as fleet_cli

    assert fleet_cli._guard is console.guard
    assert fleet_cli.err is console.err
