"""The error tree and the exit codes every command maps it to.

Each error knows whether it is worth retrying (``retryable``) and which exit code it ends a command with.
Chain with ``raise ... from exc`` so the cause survives into logs and support bundles.
"""

from __future__ import annotations

import errno
import socket
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``migrator`` command."""

    OK = 0
    FAILED = 1  # failed and needs attention
    INVALID_INPUT = 2  # bad playbook, environment, credentials or names: nothing was changed
    LOCK_HELD = 3  # another runner holds the run
    ROLLED_BACK = 4  # failed, and what the run did was undone cleanly


class MigratorError(Exception):
    """Base of every error migrator raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILED
    retryable: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and, when there is one, what to do about it, on one line."""
        text = self.message.replace("\n", " ")
        return f"{text} — {self.hint}" if self.hint else text


class InputError(MigratorError):
    """Input that can never work as given (a name, a credential, a setting): fix it and run again."""

    exit_code = ExitCode.INVALID_INPUT


class PlaybookError(InputError):
    """A playbook or environment file that cannot be loaded; names the file, line and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if file:
            where = file + (f":{line}" if line else "")
        if field:
            where = f"{where}: {field}" if where else field
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.file = file
        self.line = line
        self.field = field


class ValidationError(PlaybookError):
    """A value of the wrong type or shape, an unknown key, or a reference that does not resolve."""


class ProviderError(MigratorError):
    """A capability behind a provider failed (storage, database, cloud, DNS)."""

    def __init__(self, message: str, *, retryable: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable


class TransientError(ProviderError):
    """A fault that may pass by itself (throttling, 5xx, timeouts, dropped connections)."""

    def __init__(self, message: str, *, retry_after: float | None = None, hint: str | None = None) -> None:
        super().__init__(message, retryable=True, hint=hint)
        self.retry_after = retry_after


class PermanentError(ProviderError):
    """A fault that will not pass by retrying: authorization, a missing resource, a quota."""


class StepError(MigratorError):
    """A step failed."""

    def __init__(self, message: str, *, step_id: str | None = None, retryable: bool = False,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.step_id = step_id
        self.retryable = retryable


class PreconditionFailed(StepError):
    """What a step needs before it may change anything is not there."""


class VerificationFailed(StepError):
    """A step ran but what it produced does not match what it should."""


class StepTimeout(StepError):
    """A step ran past its time budget."""


class DeadlineOverrun(StepError):
    """The work would run past the deadline a step set for the run (the end of the read-only window)."""


class Cancelled(StepError):
    """The run was asked to stop (signal, watchdog) while a step was working."""


class CompensationError(MigratorError):
    """Undoing a step failed; the run needs attention."""


class CompensationRefused(CompensationError):
    """Undoing a step would lose data; the engineer must say so explicitly."""


class StateError(MigratorError):
    """The state store cannot be read or written as needed."""


class RunNotFound(StateError):
    exit_code = ExitCode.INVALID_INPUT


class StoreNotFound(RunNotFound):
    """A command that only reads (or acts on a run that must exist) found no state store: no run is there."""


class RunExists(StateError):
    """``run --run-id`` names a run that exists already (resume it instead)."""

    exit_code = ExitCode.INVALID_INPUT


class LockHeld(StateError):
    """Another runner holds the run's lock."""

    exit_code = ExitCode.LOCK_HELD


class LockLost(StateError):
    """This runner no longer holds the run's lock (its generation was taken over or broken): it must do nothing
    more — no state write, no side effect, no compensation."""

    exit_code = ExitCode.LOCK_HELD


class StateVersionError(StateError):
    """The state store was written by a newer migrator than this one."""


class ParamsChanged(StateError):
    """A step that is done would now run with other params; resume refuses unless forced."""

    exit_code = ExitCode.INVALID_INPUT


_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE, errno.ECONNABORTED}


def is_retryable(exc: BaseException) -> bool:
    """Whether the runner should try again after ``exc``.

    Migrator's own errors say so themselves; among the rest only network faults are worth another try.
    """
    if isinstance(exc, MigratorError):
        return exc.retryable
    if isinstance(exc, (TimeoutError, socket.timeout, ConnectionError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def exit_code_for(exc: BaseException) -> ExitCode:
    return exc.exit_code if isinstance(exc, MigratorError) else ExitCode.FAILED
