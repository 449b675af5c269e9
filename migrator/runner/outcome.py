"""What the runner tells the outside: the listener a front end implements, a command's outcome, a dry-run's rows,
and the names of the statuses the scheduler uses that are never stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from migrator.errors import ExitCode


class EngineStatus(StrEnum):
    """Statuses of the scheduler and of a command's outcome that no step or run record holds
    (those are :class:`~migrator.state.StepStatus` and :class:`~migrator.state.RunStatus`)."""

    #: A step failed with ``on_failure: continue``: the run goes on, the steps needing it are skipped.
    TOLERATED = "tolerated"
    #: A step stopped by an interrupt: resumable, never a failure.
    INTERRUPTED = "interrupted"
    #: The outcome of a command whose runner lost the run's lock to another (exit code 3).
    LOCK_LOST = "lock_lost"


class Listener(Protocol):
    """What a front end (the CLI's progress display) hears from the runner."""

    def step_started(self, step_id: str, kind: str) -> None: ...

    def step_finished(self, step_id: str, status: str, note: str | None) -> None: ...

    def progress(self, step_id: str, items: int, total_items: int | None, nbytes: int,
                 total_bytes: int | None) -> None: ...

    def message(self, text: str) -> None: ...


class NullListener:
    def step_started(self, step_id: str, kind: str) -> None:
        pass

    def step_finished(self, step_id: str, status: str, note: str | None) -> None:
        pass

    def progress(self, step_id: str, items: int, total_items: int | None, nbytes: int,
                 total_bytes: int | None) -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass
class RunOutcome:
    run_id: str
    status: str
    exit_code: ExitCode
    error: str | None = None
    failed_step: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class StepPlanView:
    """One row of a dry-run."""

    step_id: str
    kind: str
    needs: list[str]
    status: str  # "done" (no-op), "change", "deferred", "error"
    reason: str
    changes: list[str] = field(default_factory=list)
    estimate_seconds: float | None = None
    estimate_items: int | None = None
    estimate_bytes: int | None = None
    basis: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    error_exit: int | None = None


@dataclass
class StepResult:
    """How one step's turn ended: DONE, FAILED, or :attr:`EngineStatus.INTERRUPTED`."""

    step_id: str
    status: str
    error: BaseException | None = None
