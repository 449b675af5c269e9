"""The activities: everything a campaign does to the world. Each drives the runner for one tenant's run id
against the shared state store, exactly as ``migrator run``/``resume``/``rollback`` would.

``drive_tenant`` runs one phase of a tenant (up to a step kind, or to the end) in a thread and heartbeats its
progress (current step, items, bytes) to Temporal. A worker that dies stops heartbeating; Temporal retries the
phase on another worker, which resumes the same run id: the run lock is taken over only once its holder is gone
or its heartbeat expired (``LockHeld`` until then: a retryable failure), and nothing a step did is done again.
A cancelled activity (abort, a heartbeat timeout seen late, a worker shutdown) cancels the runner, which stops
at its next checkpoint; a runner whose lock was taken does nothing more.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from migrator.clock import Clock
from migrator.errors import ExitCode, LockHeld, MigratorError, RunExists
from migrator.fleet.payloads import DriveRequest, DriveResult, FinishRequest, WindowAnswer, WindowRequest
from migrator.playbook import LoadedPlaybook, load
from migrator.registry import load_registry
from migrator.state import RunStatus, StateStore, StepStatus, open_store
from migrator.window import Daypart, resolve_window, time_zone

log = logging.getLogger("migrator.fleet")

#: Seconds between heartbeats to Temporal (the SDK throttles them further to the heartbeat timeout).
HEARTBEAT_EVERY = 1.0


@dataclass
class _Progress:
    """The runner's listener: keeps the latest progress for heartbeats; stops the run before a step kind."""

    stop_before: str | None
    cancel: Callable[[], None] = lambda: None
    step: str | None = None
    items: int = 0
    nbytes: int = 0
    stopped_at: str | None = None
    steps_done: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def step_started(self, step_id: str, kind: str) -> None:
        with self._lock:
            self.step, self.items, self.nbytes = step_id, 0, 0
            if self.stop_before is not None and kind == self.stop_before and self.stopped_at is None:
                # The runner checks its cancel flag before the step's first check: the step does not begin.
                self.stopped_at = step_id
                self.cancel()

    def step_finished(self, step_id: str, status: str, note: str | None) -> None:
        with self._lock:
            if status == StepStatus.DONE:
                self.steps_done.append(step_id)

    def progress(self, step_id: str, items: int, total_items: int | None, nbytes: int,
                 total_bytes: int | None) -> None:
        with self._lock:
            self.step, self.items, self.nbytes = step_id, items, nbytes

    def message(self, text: str) -> None:
        log.info("%s", text)

    def details(self, phase: str, run_id: str) -> dict[str, Any]:
        with self._lock:
            return {"run_id": run_id, "phase": phase, "step": self.step, "items": self.items, "bytes": self.nbytes}


class CampaignClock(Clock):
    """The campaign's clock for a tenant's runner: ``offset`` seconds ahead of the wall clock, so that its
    ``window.gate`` and watchdog see the dayparts the workflow waited for (``clock_offset``: rehearsals, tests).
    The times the state store keeps stay wall-clock times."""

    def __init__(self, offset: float) -> None:
        self.offset = timedelta(seconds=offset)

    def now(self) -> datetime:
        return super().now() + self.offset

    def timestamp(self) -> float:
        return time.time()


class _Playbooks:
    """Each tenant's playbook and environment file loaded and validated once per worker, not once per phase:
    kept while neither file changes (size, mtime and inode)."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], tuple[tuple[int, ...], LoadedPlaybook]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(*paths: str) -> tuple[int, ...]:
        stamp: list[int] = []
        for path in paths:
            st = os.stat(path)
            stamp += [st.st_mtime_ns, st.st_size, st.st_ino]
        return tuple(stamp)

    def get(self, playbook_path: str, environment_path: str) -> LoadedPlaybook:
        key = (playbook_path, environment_path)
        try:
            stamp = self._stamp(*key)
        except OSError:
            stamp = ()  # load() names the missing file
        with self._lock:
            cached = self._loaded.get(key)
        if cached is not None and stamp and cached[0] == stamp:
            return cached[1]
        try:
            loaded = load(playbook_path, environment_path, registry=load_registry())
        except MigratorError as exc:
            raise _application_error(exc) from None
        with self._lock:
            self._loaded[key] = (stamp, loaded)
        return loaded


def _application_error(exc: MigratorError) -> ApplicationError:
    retryable = isinstance(exc, (LockHeld, RunExists)) or exc.exit_code not in (ExitCode.INVALID_INPUT,)
    return ApplicationError(exc.one_line(), type=type(exc).__name__, non_retryable=not retryable)


class FleetActivities:
    """The activities one worker host offers; ``identity`` names the host in results and run logs."""

    def __init__(self, identity: str, log_dir: Path | None = None) -> None:
        self.identity = identity
        self.log_dir = log_dir
        self._playbooks = _Playbooks()

    # -- activities ----------------------------------------------------------------------------------------

    @activity.defn(name="tenant_window")
    def tenant_window(self, request: WindowRequest) -> WindowAnswer:
        """The tenant's next (or current) read-only window, in its own zone: pure, but reads the zone database."""
        dayparts = {name: Daypart(name, int(span[0]), int(span[1])) for name, span in request.dayparts.items()}
        window = resolve_window(request.window, dayparts, time_zone(request.time_zone),
                                datetime.fromisoformat(request.now))
        return WindowAnswer(window.name, window.start.isoformat(), window.end.isoformat(),
                            window.start_utc.timestamp(), window.end_utc.timestamp())

    @activity.defn(name="drive_tenant")
    def drive_tenant(self, request: DriveRequest) -> DriveResult:
        """One phase of a tenant's run: started, or resumed where any worker left it."""
        loaded = self._load(request.playbook_path, request.environment_path)
        store = open_store(request.state)
        try:
            run = store.get_run(request.run_id)
            if run is not None and run.status in (RunStatus.ROLLED_BACK, RunStatus.ROLLBACK_FAILED):
                return self._result(request.run_id, "rolled_back" if run.status == RunStatus.ROLLED_BACK
                                    else "rollback_failed", run.error)
            if run is not None and run.status == RunStatus.SUCCEEDED:
                return self._result(request.run_id, "succeeded", None)
            progress = _Progress(request.stop_before)
            options = {**request.options, **({"window": request.window} if request.window else {})}
            runner = self._runner(store, progress, options, request.lock_ttl_seconds, request.phase, request.run_id,
                                  request.clock_offset_seconds)
            if run is None:
                def call() -> Any:
                    return runner.run(loaded, run_id=request.run_id, playbook_path=request.playbook_path,
                                      environment_path=request.environment_path)
            else:
                def call() -> Any:
                    return runner.resume(request.run_id, loaded)
            outcome = self._supervise(runner, progress, call, request.phase, request.run_id)
        finally:
            store.close()
        if outcome.status == RunStatus.SUCCEEDED:
            return self._result(request.run_id, "succeeded", None)
        if outcome.status == RunStatus.INTERRUPTED and progress.stopped_at is not None:
            return self._result(request.run_id, "stopped", None, stopped_before=progress.stopped_at)
        if outcome.status == RunStatus.INTERRUPTED:
            raise ApplicationError(f"run {request.run_id} was interrupted: {outcome.error}", type="Interrupted")
        status = {RunStatus.ROLLED_BACK: "rolled_back", RunStatus.ROLLBACK_FAILED: "rollback_failed"}.get(
            outcome.status, "failed")
        return self._result(request.run_id, status, outcome.error, exit_code=int(outcome.exit_code))

    @activity.defn(name="abort_tenant")
    def abort_tenant(self, request: FinishRequest) -> DriveResult:
        """An aborted tenant: rolled back unless its DNS transfer is done; then its run is finished instead."""
        loaded = self._load(request.playbook_path, request.environment_path)
        store = open_store(request.state)
        try:
            run = store.get_run(request.run_id)
            if run is None:
                return self._result(request.run_id, "not_started", None)
            if run.status == RunStatus.ROLLED_BACK:
                return self._result(request.run_id, "rolled_back", run.error)
            if run.status == RunStatus.SUCCEEDED:
                return self._result(request.run_id, "succeeded", None)
            transferred = any(rec.kind == "dns.transfer" and rec.status == StepStatus.DONE
                              for rec in store.get_steps(request.run_id).values())
            progress = _Progress(None)
            runner = self._runner(store, progress, dict(request.options), request.lock_ttl_seconds, "abort",
                                  request.run_id)
            if transferred:
                outcome = self._supervise(runner, progress, lambda: runner.resume(request.run_id, loaded), "abort",
                                          request.run_id)
            else:
                outcome = self._supervise(runner, progress, lambda: runner.rollback(request.run_id, loaded),
                                          "abort", request.run_id)
        finally:
            store.close()
        if outcome.status == RunStatus.INTERRUPTED:
            raise ApplicationError(f"run {request.run_id} was interrupted: {outcome.error}", type="Interrupted")
        status = {RunStatus.SUCCEEDED: "succeeded", RunStatus.ROLLED_BACK: "rolled_back",
                  RunStatus.ROLLBACK_FAILED: "rollback_failed"}.get(outcome.status, "failed")
        return self._result(request.run_id, status, outcome.error)

    def all(self) -> list[Callable[..., Any]]:
        return [self.tenant_window, self.drive_tenant, self.abort_tenant]

    # -- plumbing ------------------------------------------------------------------------------------------

    def _load(self, playbook_path: str, environment_path: str) -> LoadedPlaybook:
        return self._playbooks.get(playbook_path, environment_path)

    def _runner(self, store: StateStore, progress: _Progress, options: dict[str, Any], lock_ttl: float,
                phase: str, run_id: str, clock_offset: float = 0.0) -> Any:
        from migrator.runner import Runner

        runner = Runner(store, listener=progress, log_dir=self.log_dir, lock_ttl=lock_ttl,
                        clock=CampaignClock(clock_offset) if clock_offset else None,
                        options={**options, "command_line": f"migrator fleet worker --identity {self.identity} "
                                                            f"({phase} of {run_id})"})
        progress.cancel = runner.cancel
        return runner

    def _supervise(self, runner: Any, progress: _Progress, call: Callable[[], Any], phase: str, run_id: str) -> Any:
        """Runs ``call`` in a thread, heartbeating; a cancellation of the activity cancels the runner."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["outcome"] = call()
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"fleet-{run_id}", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(HEARTBEAT_EVERY)
                activity.heartbeat(progress.details(phase, run_id))
                if activity.is_worker_shutdown():
                    runner.cancel()
        except CancelledError:
            runner.cancel()  # stops at the next checkpoint; the run stays resumable
            with activity.shield_thread_cancel_exception():
                thread.join()
            log.info("%s: %s of %s cancelled at %s", self.identity, phase, run_id, progress.step)
            raise
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, MigratorError):
                raise _application_error(exc) from None
            raise exc
        return box["outcome"]

    def _result(self, run_id: str, status: str, error: str | None, *, stopped_before: str | None = None,
                exit_code: int = 0) -> DriveResult:
        return DriveResult(run_id, status, exit_code, stopped_before, error, self.identity)


