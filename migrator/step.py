"""The step contract: what a step kind implements and everything it gets through :class:`StepContext`.

A step kind is a class with typed, frozen :class:`Params` and five methods:

``check(ctx)``
    Is it already done? Reads the world; never trusts memory alone.
``plan(ctx)``
    What it would change, or why it is a no-op, with an estimate of the work. ``migrator plan`` calls only
    ``check`` and ``plan``, so both must leave the world as they found it.
``apply(ctx)``
    Does it. Long work records items (``ctx.items``) so a restart continues instead of repeating, and keeps
    small resumable facts (a long-running operation's continuation token, a record set before a change) in
    ``ctx.memo``, written before the wait they guard.
``verify(ctx)``
    Proves it; raises :class:`~migrator.errors.VerificationFailed`. A step is DONE only after verify.
``compensate(ctx)``
    Undoes what *this run* did. Kinds that cannot be undone set ``irreversible = True``.

The engine calls these in that order, writing RUNNING before ``apply`` and DONE after ``verify``; on resume a
RUNNING step is re-checked before it is applied again.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from migrator.clock import Clock
from migrator.estimator import Work
from migrator.resources import RunResources
from migrator.secrets import Redactor, Secret


class Params(BaseModel):
    """Base of every step kind's parameters: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class CheckResult:
    """Whether a step's effect is already in place, and why we think so."""

    done: bool
    reason: str
    outputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Estimate:
    """How much work a step expects: used for progress, the plan report and the read-only window forecast.

    A step counts its work (``work``: units per named rate, :mod:`migrator.estimator`); the estimator turns the
    counts into ``seconds`` and says in ``basis`` which rates it used. The engine prices every estimate that
    carries its work again with the rates of the command (measured on this machine, cached in the state
    directory), so ``seconds`` is the estimator's, not the step's.
    """

    seconds: float | None = None
    items: int | None = None
    bytes: int | None = None
    basis: str = ""  # how the figure was reached ("probe: 48 MB/s over 3 s", "no measurement")
    work: Work | None = None


@dataclass
class PlanResult:
    """What ``apply`` would change (``changes``), or, when ``changes`` is empty, why it is a no-op."""

    changes: list[str] = field(default_factory=list)
    reason: str = ""
    estimate: Estimate = field(default_factory=Estimate)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def noop(self) -> bool:
        return not self.changes

    @classmethod
    def nothing(cls, reason: str, **details: Any) -> PlanResult:
        return cls(changes=[], reason=reason, estimate=Estimate(seconds=0.0), details=dict(details))


@dataclass(frozen=True)
class ItemRecord:
    """Progress of one unit of work inside a long step (a blob, a table chunk, a block)."""

    key: str
    status: str  # "done", "failed", "skipped", or a step-specific in-between state
    bytes: int = 0
    checksum: str | None = None
    detail: Any = None


class ItemStore(Protocol):
    """Per-item checkpoints of one step in one run.

    ``record`` is buffered and thread-safe: records are written in batched transactions, so checkpointing
    100,000 items costs little. A crash loses at most the records of the batch not yet flushed: the items
    that were in flight. ``flush`` forces the buffer out (the engine also flushes when the step returns).
    """

    def record(self, key: str, status: str = "done", *, bytes: int = 0, checksum: str | None = None,
               detail: Any = None) -> None: ...

    def flush(self) -> None: ...

    def get(self, key: str) -> ItemRecord | None: ...

    def keys(self, status: str | None = "done") -> set[str]: ...

    def iter(self, status: str | None = None) -> Iterator[ItemRecord]: ...

    def count(self, status: str | None = "done") -> int: ...

    def clear(self) -> None: ...

    def set_total(self, items: int | None = None, bytes: int | None = None) -> None: ...


class Memo(Protocol):
    """Small JSON facts a step keeps across restarts (written through to the state store at once)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...

    def as_dict(self) -> dict[str, Any]: ...


class StepContext(Protocol):
    """Everything a step gets from the engine. No globals: a step reaches the world only through this."""

    @property
    def run_id(self) -> str: ...

    @property
    def step_id(self) -> str: ...

    #: Resolved references of the playbook and environment: tenant name, settings, dayparts...
    @property
    def environment(self) -> Mapping[str, Any]: ...

    #: Outputs of finished steps, by step id.
    @property
    def outputs(self) -> Mapping[str, Mapping[str, Any]]: ...

    @property
    def items(self) -> ItemStore: ...

    @property
    def memo(self) -> Memo: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def log(self) -> logging.Logger: ...

    @property
    def redactor(self) -> Redactor: ...

    @property
    def dry_run(self) -> bool: ...

    #: Options of the command (``accept_data_loss``, ``allow_delete``, ``window``...).
    @property
    def options(self) -> Mapping[str, Any]: ...

    #: Long-lived objects shared by the steps of one run (connections, clients, caches), each under a typed
    #: :class:`~migrator.resources.ResourceKey`, made once and closed by the engine when the command ends.
    @property
    def resources(self) -> RunResources: ...

    #: Set when the run must stop (signal, watchdog, timeout); long loops call ``raise_if_cancelled``.
    @property
    def cancel_event(self) -> threading.Event: ...

    #: The generation of the run's lock this runner holds (0 in a dry-run): a provider that can make a write
    #: conditional on it does, so that a runner that lost the lock cannot write even mid-transaction.
    @property
    def lock_generation(self) -> int: ...

    def reveal(self, secret: Secret | str | None) -> str | None: ...

    #: Raises ``Cancelled`` when the run must stop, ``LockLost`` when this runner no longer holds the run's lock.
    def raise_if_cancelled(self) -> None: ...

    def event(self, type: str, message: str, **data: Any) -> None: ...

    def progress(self, message: str | None = None) -> None: ...


P = TypeVar("P", bound=Params)


class Step(ABC, Generic[P]):
    """Base of every step kind. Subclasses set ``kind`` and ``Params`` and implement the contract."""

    kind: ClassVar[str]
    Params: ClassVar[type[Params]]
    #: True for kinds whose effect cannot be undone; ``compensate`` is then never called. The runner reads it on
    #: the step, so a kind whose undo depends on its params makes it a property (``shell`` without ``undo``,
    #: ``http`` with a method other than GET or HEAD).
    irreversible: ClassVar[bool] = False
    #: One-line summary for ``migrator steps``; the class docstring is the long form.
    summary: ClassVar[str] = ""
    #: True for kinds that need the forecast of the steps after them: the runner re-plans those steps just
    #: before this one runs and passes the seconds as ``ctx.options["forecast_seconds"]``.
    wants_forecast: ClassVar[bool] = False

    def __init__(self, step_id: str, params: P) -> None:
        self.step_id = step_id
        self.params: P = params

    @classmethod
    def estimate_deferred(cls, raw_params: Mapping[str, Any]) -> Estimate | None:
        """An estimate for the dry-run when the params wait for earlier steps' outputs (so no instance can be
        made): from the params as written, references unresolved. Default: none."""
        return None

    def check(self, ctx: StepContext) -> CheckResult:
        """Default: never known to be done, so the step always applies (fine for idempotent kinds)."""
        return CheckResult(False, "no check: the step always runs")

    def plan(self, ctx: StepContext) -> PlanResult:
        state = self.check(ctx)
        if state.done:
            return PlanResult.nothing(state.reason)
        return PlanResult(changes=[f"run {self.kind}"], reason=state.reason)

    @abstractmethod
    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        """Does the work; returns the step's outputs (JSON-serializable, never a secret)."""

    def verify(self, ctx: StepContext) -> None:
        """Default: the step's own check must now say it is done."""
        from migrator.errors import VerificationFailed

        state = self.check(ctx)
        if not state.done and type(self).check is not Step.check:
            raise VerificationFailed(f"{self.step_id}: not done after apply: {state.reason}", step_id=self.step_id)

    def compensate(self, ctx: StepContext) -> None:
        """Undoes what this run did. The default does nothing, which suits read-only kinds."""
        return None

    def guard_rollback(self, ctx: StepContext) -> None:
        """Raises :class:`~migrator.errors.CompensationRefused` when rolling the run back now would lose what
        this step protects. The runner asks every applied step before a rollback undoes anything, so a refusal
        leaves everything as it was. The default never refuses."""
        return None
