"""What the parts of the runner share while one runner works: the state store, the clock, the listener, the
redactor, the command's options, the cancel flag, the run's resources and the lock keeper; and the contexts,
events and error texts made from them. Each part (scheduler, attempt, compensation, planning, watchdog) gets it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from migrator.clock import Clock
from migrator.errors import MigratorError
from migrator.playbook import LoadedPlaybook, PlannedStep
from migrator.resources import RunResources
from migrator.runner.context import RunContext, StoreItems, StoreMemo
from migrator.runner.lock import LockKeeper
from migrator.runner.outcome import Listener
from migrator.secrets import Redactor
from migrator.state import StateStore, StepRecord

log = logging.getLogger("migrator")


class RunCore:
    """The state one runner's parts share, and the plumbing they all use."""

    def __init__(self, store: StateStore, clock: Clock, listener: Listener, options: dict[str, Any]) -> None:
        self.store = store
        self.clock = clock
        self.listener = listener
        self.options = options
        self.redactor = Redactor()
        self.cancel_event = threading.Event()
        self.resources = RunResources()
        #: The keeper of the run's lock while a command holds it.
        self.keeper: LockKeeper | None = None
        #: Set by the watchdog: why the run is being aborted, and the step blamed for it.
        self.abort: MigratorError | None = None
        self.abort_step: str | None = None
        #: Set by an interrupt (a signal): whatever a step raises from then on is the interrupt's doing.
        self.interrupted = False

    # ------------------------------------------------------------------------------------------------ lock

    def fence_check(self) -> None:
        """Raises :class:`~migrator.errors.LockLost` unless this runner still holds the run's lock (if it holds
        one: a dry-run holds none)."""
        keeper = self.keeper
        if keeper is not None:
            keeper.confirm()

    # -------------------------------------------------------------------------------------------- contexts

    def context(self, run_id: str, step_id: str, environment: Mapping[str, Any],
                outputs: Mapping[str, Mapping[str, Any]], items: Any, memo: Any, *,
                dry_run: bool = False) -> RunContext:
        return RunContext(
            run_id=run_id, step_id=step_id, environment=environment, outputs=outputs, items=items, memo=memo,
            clock=self.clock, log=logging.getLogger(f"migrator.step.{step_id}"), redactor=self.redactor,
            dry_run=dry_run, options=self.options, resources=self.resources, cancel_event=self.cancel_event,
            on_message=self.listener.message, fence_check=None if dry_run else self.fence_check,
            lock_generation=self.keeper.lock.generation if self.keeper is not None else 0)

    def step_context(self, run_id: str, loaded: LoadedPlaybook, step: PlannedStep, rec: StepRecord,
                     outputs: Mapping[str, Mapping[str, Any]]) -> RunContext:
        """The context of a step that runs (or is undone): items and memo in the state store, its timeout armed."""
        def on_progress(items: StoreItems) -> None:
            self.listener.progress(step.id, items.done_items, items.total_items, items.done_bytes,
                                   items.total_bytes)

        ctx = self.context(run_id, step.id, loaded.environment_values(), outputs, None, StoreMemo(self.store, rec))
        ctx.items = StoreItems(self.store, run_id, step.id, batch_size=loaded.playbook.checkpoint_batch,
                               on_progress=on_progress, cancel_check=ctx.raise_if_cancelled,
                               fence_check=self.fence_check)
        if step.spec.timeout is not None:
            ctx.deadline = self.clock.monotonic() + step.spec.timeout
        ctx.on_event = lambda type, message, data: self.event(run_id, step.id, type, message, **data)
        return ctx

    # -------------------------------------------------------------------------------------- events, state

    def event(self, run_id: str, step_id: str | None, type: str, message: str, **data: Any) -> None:
        message = self.redactor.redact(message)
        self.store.add_event(run_id, step_id, type, message, self.redactor.redact_obj(data))
        log.info("%s", message)

    def save_with_event(self, rec: StepRecord, type: str, message: str, **data: Any) -> None:
        """Saves the step and adds an event about it in one state-store transaction (one commit, not two)."""
        message = self.redactor.redact(message)
        self.store.save_step(rec, (type, message, self.redactor.redact_obj(data)))
        log.info("%s", message)

    def command_event(self, run_id: str) -> None:
        """Keeps the exact command line, so a support bundle can say how to reproduce."""
        command = self.options.get("command_line")
        if command:
            self.event(run_id, None, "command", f"command: {command}", command=command)

    def outputs_of(self, run_id: str, step_id: str) -> Mapping[str, Any]:
        rec = self.store.get_step(run_id, step_id)
        return rec.outputs if rec else {}

    # -------------------------------------------------------------------------------------- text, options

    def describe_error(self, exc: BaseException) -> str:
        text = exc.one_line() if isinstance(exc, MigratorError) else f"{type(exc).__name__}: {exc}"
        return self.redactor.redact(text)

    def seed_redactor(self, loaded: LoadedPlaybook) -> None:
        for name in loaded.env_var_names:
            self.redactor.add(os.environ.get(name))

    def public_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items()
                if isinstance(v, (str, int, float, bool, type(None))) and k != "command_line"}
