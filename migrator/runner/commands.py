"""The runner's commands: ``run``, ``resume``, ``rollback`` (each holding the run's lock, a redacting run log and
the run's resources for its length) and the dry-run ``plan``. The work itself is the parts' (see the package)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from migrator import procs
from migrator.clock import Clock
from migrator.errors import CompensationRefused, ExitCode, InputError
from migrator.playbook import LoadedPlaybook
from migrator.runner.attempt import Attempts
from migrator.runner.compensation import Compensator
from migrator.runner.core import RunCore
from migrator.runner.lock import LockKeeper, fenced, fenced_outcome, lock_ttl_from_environment
from migrator.runner.outcome import Listener, NullListener, RunOutcome, StepPlanView
from migrator.runner.planning import Planner
from migrator.runner.runlog import RunLog
from migrator.runner.scheduler import Scheduler, taken_up_again
from migrator.runner.watchdog import Watchdog
from migrator.state import RunRecord, RunStatus, StateStore

log = logging.getLogger("migrator")


class Runner:
    """Runs, resumes, rolls back and dry-runs one playbook against one state store."""

    def __init__(self, store: StateStore, *, clock: Clock | None = None, listener: Listener | None = None,
                 log_dir: str | Path | None = None, options: Mapping[str, Any] | None = None,
                 lock_ttl: float | None = None) -> None:
        self.core = RunCore(store, clock or Clock(), listener or NullListener(), dict(options or {}))
        self.log_dir = Path(log_dir) if log_dir else None
        self.lock_ttl = lock_ttl if lock_ttl is not None else lock_ttl_from_environment()
        self._planner = Planner(self.core)
        self._watchdog = Watchdog(self.core)
        self._compensator = Compensator(self.core)
        self._scheduler = Scheduler(self.core, Attempts(self.core, self._planner), self._watchdog,
                                    self._compensator)

    # -------------------------------------------------------------------------------- what the outside sees

    @property
    def listener(self) -> Listener:
        """The front end that hears of steps and progress (the CLI closes its display with the command)."""
        return self.core.listener

    @property
    def watchdog_interval(self) -> float:
        """How often (seconds) the scheduler wakes to look at deadlines while steps run."""
        return self._watchdog.interval

    @watchdog_interval.setter
    def watchdog_interval(self, seconds: float) -> None:
        self._watchdog.interval = seconds

    # ---------------------------------------------------------------------------------------------- commands

    def cancel(self) -> None:
        """Asks running steps to stop at their next checkpoint; the run stays resumable."""
        self.core.interrupted = True
        self.core.cancel_event.set()

    @fenced_outcome
    def run(self, loaded: LoadedPlaybook, *, run_id: str | None = None, playbook_path: str = "",
            environment_path: str | None = None) -> RunOutcome:
        run_id = run_id or new_run_id(loaded)
        with self._holding(run_id, loaded) as stale, self._fenced(run_id):
            now = self.core.clock.timestamp()
            self.core.store.create_run(RunRecord(
                run_id=run_id, playbook_name=loaded.playbook.name, playbook_path=playbook_path,
                playbook_text=loaded.playbook_doc.text, environment_path=environment_path,
                environment_text=loaded.environment_doc.text if loaded.environment_doc else None,
                status=RunStatus.RUNNING, created_at=now, updated_at=now, options=self.core.public_options(),
                tenant=loaded.environment.tenant.name if loaded.environment else None))
            self.core.event(run_id, None, "run.started", f"run {run_id} of playbook {loaded.playbook.name} started")
            self.core.command_event(run_id)
            if stale:
                self.core.event(run_id, None, "lock.stale", stale)
            if not self.core.options.get("no_forecast"):
                self._planner.record_forecast(run_id, loaded, [s.id for s in loaded.steps])
            return self._scheduler.execute(run_id, loaded)

    @fenced_outcome
    def resume(self, run_id: str, loaded: LoadedPlaybook, *, force: bool = False,
               rerun: tuple[str, ...] = ()) -> RunOutcome:
        """Goes on with a run; ``rerun``: done steps taken up again from their check, with every step needing them."""
        run = self.core.store.require_run(run_id)
        if run.status in (RunStatus.ROLLED_BACK, RunStatus.ROLLING_BACK, RunStatus.ROLLBACK_FAILED):
            raise InputError(f"run {run_id} was rolled back ({run.status}); it cannot be resumed",
                             hint="start a new run with: migrator run")
        again = taken_up_again(loaded, rerun)  # an unknown step is bad input: refused before the lock is taken
        with self._holding(run_id, loaded) as stale, self._fenced(run_id):
            run = self.core.store.require_run(run_id)  # as the lock's holder sees it, not as it was before
            if stale:
                self.core.event(run_id, None, "lock.stale", stale)
                self.core.listener.message(f"note: {stale}")
            if run.status == RunStatus.SUCCEEDED and not again:
                return RunOutcome(run_id, run.status, ExitCode.OK, notes=["the run had already succeeded"])
            # Refused (params changed, no --force) before anything about the run is changed. Steps taken up
            # again are checked anew with their params as they are now.
            kept = {sid: rec for sid, rec in self.core.store.get_steps(run_id).items() if sid not in again}
            self._scheduler.check_hashes(run_id, loaded, kept, force)
            self.core.store.update_run(run_id, status=RunStatus.RUNNING, error=None, finished_at=None)
            self.core.event(run_id, None, "run.resumed", f"run {run_id} resumed")
            if again:
                self.core.event(run_id, None, "run.rerun", "taken up again from their check (--rerun): "
                                + ", ".join(s.id for s in loaded.steps if s.id in again), steps=sorted(again))
            self.core.command_event(run_id)
            return self._scheduler.execute(run_id, loaded, rerun=tuple(again))

    @fenced_outcome
    def rollback(self, run_id: str, loaded: LoadedPlaybook) -> RunOutcome:
        """Compensates, newest first, every step this run applied."""
        self.core.store.require_run(run_id)
        with self._holding(run_id, loaded) as stale, self._fenced(run_id):
            run = self.core.store.require_run(run_id)
            if stale:
                self.core.event(run_id, None, "lock.stale", stale)
            if run.status == RunStatus.ROLLED_BACK:
                return RunOutcome(run_id, run.status, ExitCode.OK, notes=["the run was already rolled back"])
            self.core.event(run_id, None, "rollback.requested", "rollback requested")
            self.core.command_event(run_id)
            try:
                clean, error = self._compensator.compensate(run_id, loaded)
            except CompensationRefused as exc:
                return RunOutcome(run_id, run.status, ExitCode.FAILED, error=self.core.describe_error(exc),
                                  notes=["nothing was undone; the run is as it was"])
            status = RunStatus.ROLLED_BACK if clean else RunStatus.ROLLBACK_FAILED
            self.core.store.update_run(run_id, status=status, finished_at=self.core.clock.timestamp(),
                                       error=None if clean else error)
            self.core.event(run_id, None, f"run.{status}", f"run {run_id} {status.replace('_', ' ')}")
            return RunOutcome(run_id, status, ExitCode.OK if clean else ExitCode.FAILED, error=error)

    @contextmanager
    def _holding(self, run_id: str, loaded: LoadedPlaybook) -> Iterator[str | None]:
        """Holds the run's lock (heartbeating it), a redacting run log and the run's resources for a command;
        yields why a stale lock was taken over, if one was."""
        self.core.seed_redactor(loaded)
        lock, stale = self.core.store.acquire_lock(run_id, ttl=self.lock_ttl)
        self.core.store.hold(lock)
        keeper = self.core.keeper = LockKeeper(self.core.store, lock, self.lock_ttl, self.core.cancel_event)
        forget = procs.at_hard_exit(keeper.release)  # a second Ctrl-C still leaves the lock released
        try:
            with RunLog(self.log_dir, run_id, self.core.redactor):
                yield stale
        finally:
            forget()
            keeper.release()
            self.core.store.hold(None)
            self.core.keeper = None
            self.core.resources.close()

    def _fenced(self, run_id: str) -> AbstractContextManager[None]:
        return fenced(run_id, self.core.cancel_event, self.core.listener)

    def plan(self, loaded: LoadedPlaybook) -> list[StepPlanView]:
        """The dry-run: ``check`` and ``plan`` of every step, in dependency order. Writes nothing."""
        return self._planner.plan(loaded)


def new_run_id(loaded: LoadedPlaybook) -> str:
    tenant = loaded.environment.tenant.name if loaded.environment else loaded.playbook.name
    # a run id names the log file: a playbook's free-text name keeps only what a file name can hold, and is short
    tenant = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in tenant)[:63].strip(".-")
    tenant = tenant or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{tenant}-{stamp}-{uuid.uuid4().hex[:6]}"
