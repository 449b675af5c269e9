"""The runner: the only place that orders steps, retries them, checkpoints them and compensates them.

For every step: resolve its params, ``check`` (already done?), write RUNNING, ``apply``, flush its items,
``verify``, write DONE. Transient errors are retried with exponential backoff and jitter (tenacity), each retry
starting again from ``check``; permanent ones fail at once. Independent branches (``needs``) run concurrently
up to the playbook's ``concurrency``. On failure the playbook's ``on_failure`` decides: ``stop`` leaves the run
resumable, ``rollback`` compensates every step this run applied, newest first. A run holds a lock (host, pid,
heartbeat, expiry) for as long as it works, so two runners never work on one run; the lock is *fenced*: every
state write checks that the lock is still this runner's (see :mod:`migrator.state`), and a step checks its lease
before each checkpoint, so a runner that was paused past its lock's expiry and taken over does nothing more — no
side effect, no state write, no compensation — and ends with exit code 3.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_exponential_jitter

from migrator import procs
from migrator.clock import Clock
from migrator.errors import (
    Cancelled,
    CompensationError,
    CompensationRefused,
    DeadlineOverrun,
    ExitCode,
    InputError,
    LockLost,
    MigratorError,
    ParamsChanged,
    StateError,
    StepTimeout,
    TransientError,
    exit_code_for,
    is_retryable,
)
from migrator.playbook import LoadedPlaybook, PlannedStep, RetryPolicy, params_hash
from migrator.secrets import Redactor, Secret
from migrator.state import LOCK_TTL_SECONDS, LockInfo, RunRecord, RunStatus, StateStore, StepRecord, StepStatus
from migrator.step import ItemRecord, PlanResult, Step
from migrator.testing import MemoryItems, MemoryMemo

log = logging.getLogger("migrator")


# ------------------------------------------------------------------------------------------------------ listener


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


# --------------------------------------------------------------------------------------------- items and memo


class StoreItems:
    """Item checkpoints of one step, buffered and written in batched transactions.

    A batch goes out when it holds ``batch_size`` records or ``interval`` seconds have passed since the last
    one, so a crash loses at most one batch: the items that were in flight.
    """

    def __init__(self, store: StateStore, run_id: str, step_id: str, *, batch_size: int = 500,
                 interval: float = 1.0, on_progress: Callable[[StoreItems], None] | None = None,
                 cancel_check: Callable[[], None] | None = None,
                 fence_check: Callable[[], None] | None = None) -> None:
        self._store = store
        self._run_id = run_id
        self._step_id = step_id
        self._batch_size = batch_size
        self._interval = interval
        self._buffer: dict[str, ItemRecord] = {}
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._on_progress = on_progress
        self._cancel_check = cancel_check
        self._fence_check = fence_check
        self.total_items: int | None = None
        self.total_bytes: int | None = None
        self.done_items, self.done_bytes = store.count_items(run_id, step_id, "done")

    def record(self, key: str, status: str = "done", *, bytes: int = 0, checksum: str | None = None,
               detail: Any = None) -> None:
        if self._fence_check is not None:
            # Cheap (a clock read) while the lease is fresh: a runner woken from a pause finds out here, before
            # the step goes on to its next side effect.
            self._fence_check()
        flush = False
        with self._lock:
            self._buffer[key] = ItemRecord(key, status, bytes, checksum, detail)
            if status == "done":
                self.done_items += 1
                self.done_bytes += bytes
            if len(self._buffer) >= self._batch_size or time.monotonic() - self._last_flush >= self._interval:
                flush = True
        if flush:
            self.flush()
            if self._cancel_check is not None:
                self._cancel_check()

    def flush(self) -> None:
        with self._lock:
            batch = list(self._buffer.values())
            self._buffer.clear()
            self._last_flush = time.monotonic()
            if batch:
                # written under our lock so batches of one step reach the store in order
                self._store.write_items(self._run_id, self._step_id, batch)
        if batch and self._on_progress is not None:
            self._on_progress(self)

    def get(self, key: str) -> ItemRecord | None:
        with self._lock:
            if key in self._buffer:
                return self._buffer[key]
        return self._store.get_item(self._run_id, self._step_id, key)

    def keys(self, status: str | None = "done") -> set[str]:
        self.flush()
        return self._store.item_keys(self._run_id, self._step_id, status)

    def iter(self, status: str | None = None) -> Iterator[ItemRecord]:
        self.flush()
        return self._store.iter_items(self._run_id, self._step_id, status)

    def count(self, status: str | None = "done") -> int:
        self.flush()
        return self._store.count_items(self._run_id, self._step_id, status)[0]

    def clear(self) -> None:
        with self._lock:
            self._buffer.clear()
        self._store.clear_items(self._run_id, self._step_id)
        self.done_items = self.done_bytes = 0

    def set_total(self, items: int | None = None, bytes: int | None = None) -> None:
        self.total_items, self.total_bytes = items, bytes
        if self._on_progress is not None:
            self._on_progress(self)


class StoreMemo:
    """A step's small resumable facts; every change is written through at once."""

    def __init__(self, store: StateStore, record: StepRecord) -> None:
        self._store = store
        self._record = record
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._record.memo.get(key, default)

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._record.memo[key] = value
            self._store.set_memo(self._record.run_id, self._record.step_id, self._record.memo)

    def delete(self, key: str) -> None:
        with self._lock:
            if self._record.memo.pop(key, None) is not None:
                self._store.set_memo(self._record.run_id, self._record.step_id, self._record.memo)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._record.memo)


# ------------------------------------------------------------------------------------------------------ context


@dataclass
class RunContext:
    """The :class:`~migrator.step.StepContext` the runner hands a step."""

    run_id: str
    step_id: str
    environment: Mapping[str, Any]
    outputs: Mapping[str, Mapping[str, Any]]
    items: Any
    memo: Any
    clock: Clock
    log: logging.Logger
    redactor: Redactor
    dry_run: bool
    options: Mapping[str, Any]
    resources: dict[str, Any]
    cancel_event: threading.Event
    deadline: float | None = None
    on_event: Callable[[str, str, dict[str, Any]], None] | None = None
    on_message: Callable[[str], None] | None = None
    #: Raises :class:`LockLost` when this runner no longer holds the run's lock (None: no lock, a dry-run).
    fence_check: Callable[[], None] | None = None
    #: The generation of the run's lock this runner holds (0: none); providers that can make a write
    #: conditional on it do (the restore's marker table).
    lock_generation: int = 0

    def reveal(self, secret: Secret | str | None) -> str | None:
        if isinstance(secret, Secret):
            return secret.reveal(self.redactor)
        return secret

    def raise_if_cancelled(self) -> None:
        if self.fence_check is not None:
            self.fence_check()
        if self.cancel_event.is_set():
            raise Cancelled(f"{self.step_id}: interrupted", step_id=self.step_id)
        if self.deadline is not None and self.clock.monotonic() > self.deadline:
            raise StepTimeout(f"{self.step_id}: ran past its timeout", step_id=self.step_id,
                              hint="raise the step's timeout: in the playbook, or look at why it is slow")

    def event(self, type: str, message: str, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(type, message, data)

    def progress(self, message: str | None = None) -> None:
        if message and self.on_message is not None:
            self.on_message(f"{self.step_id}: {self.redactor.redact(message)}")


# ------------------------------------------------------------------------------------------------------ results


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


class _Fenced(Exception):
    """Carries the outcome of a command whose runner lost its lock, past every frame that would write state."""

    def __init__(self, outcome: RunOutcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def _fenced_outcome(method: Callable[..., RunOutcome]) -> Callable[..., RunOutcome]:
    """A command that lost its lock returns the ``lock_lost`` outcome (exit 3) instead of going on."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> RunOutcome:
        try:
            return method(*args, **kwargs)
        except _Fenced as fenced:
            return fenced.outcome

    return wrapper


@dataclass
class _StepResult:
    step_id: str
    status: str  # DONE, FAILED, or "interrupted"
    error: BaseException | None = None


def _lease_clock() -> float:
    """Seconds on a clock that keeps counting while the process is stopped and while the machine sleeps."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


class _LockKeeper:
    """Heartbeats the run lock in the background and guards it in the foreground.

    The background beat renews the lease every third of its time to live; when a beat finds the lock gone (taken
    over after this process was paused past its expiry, or broken by ``unlock --force``) the keeper is ``lost``
    and the run is cancelled. :meth:`confirm` is the foreground guard steps reach through their context before
    each checkpoint: while the last good beat is recent it costs a clock read; once it is older than half the
    lease (the process was paused, or the store is slow) it renews the lease itself before letting the step go
    on, and raises :class:`LockLost` when it cannot.
    """

    def __init__(self, store: StateStore, lock: LockInfo, ttl: float, cancel: threading.Event) -> None:
        self.store, self.lock, self.ttl, self.cancel = store, lock, ttl, cancel
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._beat_lock = threading.Lock()
        self._last_beat = _lease_clock()
        self._thread = threading.Thread(target=self._beat, name="migrator-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> bool:
        """One heartbeat; False when the lock is no longer ours. Store faults propagate."""
        with self._beat_lock:
            if self.lost.is_set():
                return False
            started = _lease_clock()
            if self.store.heartbeat(self.lock, self.ttl):
                self._last_beat = started
                return True
            self._lose()
            return False

    def _lose(self) -> None:
        self.lost.set()
        self.cancel.set()
        log.warning("run %s: lock generation %s was taken over or broken; this runner stops and does nothing more",
                    self.lock.run_id, self.lock.generation)

    def _beat(self) -> None:
        while not self._stop.wait(max(self.ttl / 3.0, 0.2)):
            try:
                if not self._renew():
                    return
            except Exception:  # a passing store fault: the next beat tries again before expiry
                log.warning("lock heartbeat failed; retrying", exc_info=True)

    def confirm(self) -> None:
        """Raises :class:`LockLost` unless this runner still holds the lock, renewing a lease that went stale."""
        if not self.lost.is_set() and _lease_clock() - self._last_beat <= self.ttl / 2.0:
            return
        try:
            held = self._renew()
        except Exception as exc:
            # The store cannot say; past the lease's expiry another runner may have it: do nothing more.
            if _lease_clock() - self._last_beat > self.ttl:
                self._lose()
                raise LockLost(f"run {self.lock.run_id}: the lock's lease expired and the state store does not "
                               f"answer ({type(exc).__name__}); this runner stops",
                               hint=f"when the store answers: migrator resume {self.lock.run_id}") from exc
            return
        if not held:
            raise LockLost(f"run {self.lock.run_id}: this runner's lock (generation {self.lock.generation}) was taken "
                           "over or broken; it does nothing more",
                           hint=f"see who holds it: migrator status {self.lock.run_id}")

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self.lost.is_set():
            self.store.release_lock(self.lock)


class _RedactFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redactor.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


# ------------------------------------------------------------------------------------------------------- runner


class Runner:
    """Runs, resumes, rolls back and dry-runs one playbook against one state store."""

    #: How often (seconds) the scheduler wakes to look at deadlines while steps run.
    watchdog_interval = 0.5

    def __init__(self, store: StateStore, *, clock: Clock | None = None, listener: Listener | None = None,
                 log_dir: str | Path | None = None, options: Mapping[str, Any] | None = None,
                 lock_ttl: float | None = None) -> None:
        self.store = store
        self.clock = clock or Clock()
        self.listener: Listener = listener or NullListener()
        self.log_dir = Path(log_dir) if log_dir else None
        self.options: dict[str, Any] = dict(options or {})
        self.lock_ttl = lock_ttl if lock_ttl is not None else lock_ttl_from_environment()
        self.redactor = Redactor()
        self.cancel_event = threading.Event()
        self._resources: dict[str, Any] = {}
        self._abort: MigratorError | None = None
        self._abort_step: str | None = None
        self._keeper: _LockKeeper | None = None
        #: Set by :meth:`cancel` (a signal): whatever a step raises from then on is the interrupt's doing.
        self._interrupted = False

    # ---------------------------------------------------------------------------------------------- commands

    def cancel(self) -> None:
        """Asks running steps to stop at their next checkpoint; the run stays resumable."""
        self._interrupted = True
        self.cancel_event.set()

    @_fenced_outcome
    def run(self, loaded: LoadedPlaybook, *, run_id: str | None = None, playbook_path: str = "",
            environment_path: str | None = None) -> RunOutcome:
        run_id = run_id or new_run_id(loaded)
        with self._holding(run_id, loaded) as stale, self._fenced(run_id):
            now = time.time()
            self.store.create_run(RunRecord(
                run_id=run_id, playbook_name=loaded.playbook.name, playbook_path=playbook_path,
                playbook_text=loaded.playbook_doc.text, environment_path=environment_path,
                environment_text=loaded.environment_doc.text if loaded.environment_doc else None,
                status=RunStatus.RUNNING, created_at=now, updated_at=now, options=self._public_options(),
                tenant=loaded.environment.tenant.name if loaded.environment else None))
            self._event(run_id, None, "run.started", f"run {run_id} of playbook {loaded.playbook.name} started")
            self._command_event(run_id)
            if stale:
                self._event(run_id, None, "lock.stale", stale)
            if not self.options.get("no_forecast"):
                self._record_forecast(run_id, loaded, [s.id for s in loaded.steps])
            return self._execute(run_id, loaded)

    @_fenced_outcome
    def resume(self, run_id: str, loaded: LoadedPlaybook, *, force: bool = False,
               rerun: tuple[str, ...] = ()) -> RunOutcome:
        """Goes on with a run; ``rerun``: done steps taken up again from their check, with every step needing them."""
        run = self.store.require_run(run_id)
        if run.status in (RunStatus.ROLLED_BACK, RunStatus.ROLLING_BACK, RunStatus.ROLLBACK_FAILED):
            raise InputError(f"run {run_id} was rolled back ({run.status}); it cannot be resumed",
                             hint="start a new run with: migrator run")
        again = _taken_up_again(loaded, rerun)  # an unknown step is bad input: refused before the lock is taken
        with self._holding(run_id, loaded) as stale, self._fenced(run_id):
            run = self.store.require_run(run_id)  # as the lock's holder sees it, not as it was before
            if stale:
                self._event(run_id, None, "lock.stale", stale)
                self.listener.message(f"note: {stale}")
            if run.status == RunStatus.SUCCEEDED and not again:
                return RunOutcome(run_id, run.status, ExitCode.OK, notes=["the run had already succeeded"])
            # Refused (params changed, no --force) before anything about the run is changed. Steps taken up
            # again are checked anew with their params as they are now.
            self._check_hashes(run_id, loaded, {sid: rec for sid, rec in self.store.get_steps(run_id).items()
                                                if sid not in again}, force)
            self.store.update_run(run_id, status=RunStatus.RUNNING, error=None, finished_at=None)
            self._event(run_id, None, "run.resumed", f"run {run_id} resumed")
            if again:
                self._event(run_id, None, "run.rerun", "taken up again from their check (--rerun): "
                            + ", ".join(s.id for s in loaded.steps if s.id in again), steps=sorted(again))
            self._command_event(run_id)
            return self._execute(run_id, loaded, rerun=tuple(again))

    @_fenced_outcome
    def rollback(self, run_id: str, loaded: LoadedPlaybook) -> RunOutcome:
        """Compensates, newest first, every step this run applied."""
        self.store.require_run(run_id)
        with self._holding(run_id, loaded) as stale, self._fenced(run_id):
            run = self.store.require_run(run_id)
            if stale:
                self._event(run_id, None, "lock.stale", stale)
            if run.status == RunStatus.ROLLED_BACK:
                return RunOutcome(run_id, run.status, ExitCode.OK, notes=["the run was already rolled back"])
            self._event(run_id, None, "rollback.requested", "rollback requested")
            self._command_event(run_id)
            try:
                clean, error = self._compensate(run_id, loaded)
            except CompensationRefused as exc:
                return RunOutcome(run_id, run.status, ExitCode.FAILED, error=self._describe_error(exc),
                                  notes=["nothing was undone; the run is as it was"])
            status = RunStatus.ROLLED_BACK if clean else RunStatus.ROLLBACK_FAILED
            self.store.update_run(run_id, status=status, finished_at=time.time(), error=None if clean else error)
            self._event(run_id, None, f"run.{status}", f"run {run_id} {status.replace('_', ' ')}")
            return RunOutcome(run_id, status, ExitCode.OK if clean else ExitCode.FAILED, error=error)

    @contextmanager
    def _holding(self, run_id: str, loaded: LoadedPlaybook) -> Iterator[str | None]:
        """Holds the run's lock (heartbeating it), a redacting run log and the run's resources for a command;
        yields why a stale lock was taken over, if one was."""
        self._seed_redactor(loaded)
        lock, stale = self.store.acquire_lock(run_id, ttl=self.lock_ttl)
        self.store.hold(lock)
        keeper = self._keeper = _LockKeeper(self.store, lock, self.lock_ttl, self.cancel_event)
        forget = procs.at_hard_exit(keeper.release)  # a second Ctrl-C still leaves the lock released
        try:
            with self._run_logging(run_id):
                yield stale
        finally:
            forget()
            keeper.release()
            self.store.hold(None)
            self._keeper = None
            self._close_resources()

    @contextmanager
    def _fenced(self, run_id: str) -> Iterator[None]:
        """Turns :class:`LockLost` (this runner's lock generation taken over or broken) into an outcome, after
        the steps still running stopped; nothing more is written or undone: the run belongs to the new holder."""
        try:
            yield
        except LockLost as exc:
            self.cancel_event.set()
            self.listener.message(exc.one_line())
            log.warning("%s", exc.one_line())
            raise _Fenced(RunOutcome(run_id, "lock_lost", ExitCode.LOCK_HELD, error=exc.one_line())) from exc

    def _fence_check(self) -> None:
        keeper = self._keeper
        if keeper is not None:
            keeper.confirm()

    def plan(self, loaded: LoadedPlaybook) -> list[StepPlanView]:
        """The dry-run: ``check`` and ``plan`` of every step, in dependency order. Writes nothing."""
        self._seed_redactor(loaded)
        outputs: dict[str, Mapping[str, Any]] = {}
        views: list[StepPlanView] = []
        by_id_view: dict[str, StepPlanView] = {}
        env = loaded.environment_values()
        try:
            for step in _topological(loaded):
                view = StepPlanView(step.id, step.spec.uses, step.needs, "change", "")
                try:
                    params = loaded.try_resolve_params(step, outputs, "plan")
                    if params is None:
                        missing = sorted(
                            {s for s in step.needs if s not in outputs} & loaded.ancestors(step.id))
                        view.status = "deferred"
                        view.reason = f"its params use outputs of {', '.join(missing) or 'earlier steps'}, " \
                                      "known only when the run gets there"
                        rough = step.kind.estimate_deferred(step.raw_params)
                        if rough is not None:
                            view.estimate_seconds, view.basis = rough.seconds, rough.basis
                    else:
                        instance = step.kind(step.id, params)
                        ctx = self._context("plan", step.id, env, outputs, MemoryItems(), MemoryMemo(),
                                            dry_run=True)
                        state = instance.check(ctx)
                        result = instance.plan(ctx)
                        if state.done:
                            outputs[step.id] = dict(state.outputs)
                        _fill_view(view, state.done, state.reason, result)
                except MigratorError as exc:
                    # A step whose input an earlier step has yet to make cannot be planned now: that is the
                    # plan working as intended, not a problem to fix (bad input, though, is always an error).
                    pending = [a for a in sorted(loaded.ancestors(step.id)) if by_id_view.get(a) is not None
                               and by_id_view[a].status in ("change", "deferred")]
                    if pending and not isinstance(exc, InputError):
                        view.status = "deferred"
                        view.reason = self.redactor.redact(
                            f"planned once {', '.join(pending)} ran (now: {exc.one_line()})")
                    else:
                        view.status = "error"
                        view.reason = self.redactor.redact(exc.one_line())
                        view.error_exit = int(exc.exit_code)
                except Exception as exc:  # a dry-run reports every problem rather than stopping at the first
                    view.status = "error"
                    view.reason = self.redactor.redact(f"{type(exc).__name__}: {exc}")
                    view.error_exit = int(ExitCode.FAILED)
                views.append(view)
                by_id_view[view.step_id] = view
        finally:
            self._close_resources()
        return views

    # ------------------------------------------------------------------------------------------------ engine

    def _execute(self, run_id: str, loaded: LoadedPlaybook, *, rerun: tuple[str, ...] = ()) -> RunOutcome:
        records = self.store.get_steps(run_id)
        by_id = loaded.by_id
        # A step left in any unfinished state, or named in ``rerun``, is taken up again, from its check.
        status: dict[str, str] = {
            s.id: StepStatus.DONE if s.id in records and records[s.id].status == StepStatus.DONE
            and s.id not in rerun else StepStatus.PENDING for s in loaded.steps}
        concurrency = int(self.options.get("concurrency") or loaded.playbook.concurrency)
        failed: _StepResult | None = None
        interrupted = False
        running: dict[Future[_StepResult], str] = {}
        tolerated: set[str] = set()
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="migrator-step") as pool:
            while True:
                if failed is None and not interrupted and not self.cancel_event.is_set():
                    for step in loaded.steps:
                        if len(running) >= concurrency:
                            break
                        if status[step.id] == StepStatus.DONE or step.id in running.values():
                            continue
                        if status[step.id] in (StepStatus.SKIPPED, "tolerated"):
                            continue
                        if any(status[d] in (StepStatus.SKIPPED, "tolerated") for d in step.needs):
                            status[step.id] = StepStatus.SKIPPED
                            self._mark_skipped(run_id, step, "a step it needs failed (on_failure: continue)")
                            continue
                        if all(status[d] == StepStatus.DONE for d in step.needs):
                            outputs = {sid: self._outputs_of(run_id, sid) for sid in loaded.ancestors(step.id)}
                            fut = pool.submit(self._run_step, run_id, loaded, step, outputs)
                            running[fut] = step.id
                if not running:
                    break
                done, _ = wait(list(running), timeout=self.watchdog_interval, return_when=FIRST_COMPLETED)
                if self._abort is None:
                    self._watch_deadlines(run_id, loaded, status, set(running.values()))
                for fut in done:
                    step_id = running.pop(fut)
                    result = fut.result()
                    if result.status == StepStatus.DONE:
                        status[step_id] = StepStatus.DONE
                    elif result.status == "interrupted":
                        interrupted = True
                        status[step_id] = StepStatus.RUNNING
                    elif by_id[step_id].on_failure(loaded.playbook) == "continue" and not isinstance(
                            result.error, Cancelled):
                        status[step_id] = "tolerated"
                        tolerated.add(step_id)
                    else:
                        status[step_id] = StepStatus.FAILED
                        if failed is None:
                            failed = result
                            # The run stops here: steps still busy on other branches stop at their next
                            # checkpoint (resumable, or undone by the rollback) instead of running to their end.
                            self.cancel_event.set()
        if self._abort is not None:
            culprit = self._abort_step or (failed.step_id if failed else loaded.steps[0].id)
            for step_id, st in status.items():
                if st == StepStatus.RUNNING:  # interrupted by the watchdog: record why
                    rec = self.store.get_step(run_id, step_id)
                    if rec is not None:
                        rec.status, rec.error = StepStatus.FAILED, self._describe_error(self._abort)
                        self.store.save_step(rec)
            return self._fail(run_id, loaded, _StepResult(culprit, StepStatus.FAILED, self._abort))
        if failed is not None:
            return self._fail(run_id, loaded, failed)
        if interrupted or self.cancel_event.is_set():
            reason = "the run's lock was taken by another runner" if self.cancel_event.is_set() and \
                self.store.get_lock(run_id) is None else "interrupted"
            self.store.update_run(run_id, status=RunStatus.INTERRUPTED, error=reason)
            self._event(run_id, None, "run.interrupted", f"run {run_id} interrupted; resume it to go on")
            return RunOutcome(run_id, RunStatus.INTERRUPTED, ExitCode.FAILED, error=reason,
                              notes=[f"resume with: migrator resume {run_id}"])
        self.store.update_run(run_id, status=RunStatus.SUCCEEDED, finished_at=time.time(), error=None)
        notes = [f"step {s} failed but was allowed to (on_failure: continue)" for s in sorted(tolerated)]
        self._event(run_id, None, "run.succeeded", f"run {run_id} succeeded")
        return RunOutcome(run_id, RunStatus.SUCCEEDED, ExitCode.OK, notes=notes)

    def _fail(self, run_id: str, loaded: LoadedPlaybook, failed: _StepResult) -> RunOutcome:
        assert failed.error is not None
        error = self._describe_error(failed.error)
        step = loaded.by_id[failed.step_id]
        policy = step.on_failure(loaded.playbook)
        if policy == "rollback" or (self._abort is not None and policy != "continue"):
            # A watchdog abort stopped the steps through the cancel flag; the undo must not see it.
            self.cancel_event.clear()
            self.store.update_run(run_id, status=RunStatus.ROLLING_BACK, error=error)
            self._event(run_id, None, "rollback.started", f"step {failed.step_id} failed; rolling back")
            self.listener.message(f"step {failed.step_id} failed; rolling back what this run did")
            try:
                clean, comp_error = self._compensate(run_id, loaded)
            except CompensationRefused as exc:
                refused = f"{error}; rollback refused: {self._describe_error(exc)}"
                self.store.update_run(run_id, status=RunStatus.FAILED, error=refused)
                self._event(run_id, None, "run.failed", f"run {run_id} failed at step {failed.step_id}; "
                                                        "its rollback was refused, nothing was undone")
                return RunOutcome(run_id, RunStatus.FAILED, ExitCode.FAILED, error=refused,
                                  failed_step=failed.step_id)
            if clean:
                self.store.update_run(run_id, status=RunStatus.ROLLED_BACK, finished_at=time.time(), error=error)
                self._event(run_id, None, "run.rolled_back", f"run {run_id} failed and was rolled back")
                return RunOutcome(run_id, RunStatus.ROLLED_BACK, ExitCode.ROLLED_BACK, error=error,
                                  failed_step=failed.step_id)
            self.store.update_run(run_id, status=RunStatus.ROLLBACK_FAILED, finished_at=time.time(),
                                  error=f"{error}; rollback: {comp_error}")
            return RunOutcome(run_id, RunStatus.ROLLBACK_FAILED, ExitCode.FAILED,
                              error=f"{error}; rollback incomplete: {comp_error}", failed_step=failed.step_id)
        self.store.update_run(run_id, status=RunStatus.FAILED, error=error)
        self._event(run_id, None, "run.failed", f"run {run_id} failed at step {failed.step_id}")
        code = exit_code_for(failed.error)
        return RunOutcome(run_id, RunStatus.FAILED, code if code != ExitCode.OK else ExitCode.FAILED,
                          error=error, failed_step=failed.step_id,
                          notes=[f"fix the cause, then: migrator resume {run_id}   (or undo: migrator rollback "
                                 f"{run_id})"])

    def _check_hashes(self, run_id: str, loaded: LoadedPlaybook, records: Mapping[str, StepRecord],
                      force: bool) -> None:
        outputs = {sid: r.outputs for sid, r in records.items() if r.status == StepStatus.DONE}
        for step in loaded.steps:
            rec = records.get(step.id)
            if rec is None or rec.status != StepStatus.DONE or rec.params_hash is None:
                continue
            params = loaded.try_resolve_params(step, outputs, run_id)
            if params is None:
                continue
            new_hash = params_hash(params)
            if new_hash != rec.params_hash:
                if not force:
                    raise ParamsChanged(
                        f"step {step.id} is done, but its params changed since (hash {rec.params_hash} → "
                        f"{new_hash})", hint="resume with --force to keep it done as it is, or start a new run")
                self._event(run_id, step.id, "step.params_changed",
                            f"params of done step {step.id} changed; kept done (--force)")

    def _outputs_of(self, run_id: str, step_id: str) -> Mapping[str, Any]:
        rec = self.store.get_step(run_id, step_id)
        return rec.outputs if rec else {}

    def _mark_skipped(self, run_id: str, step: PlannedStep, why: str) -> None:
        rec = self.store.get_step(run_id, step.id) or StepRecord(run_id, step.id, step.spec.uses)
        rec.status, rec.note = StepStatus.SKIPPED, why
        self.store.save_step(rec)
        self._event(run_id, step.id, "step.skipped", f"step {step.id} skipped: {why}")
        self.listener.step_finished(step.id, StepStatus.SKIPPED, why)

    def _run_step(self, run_id: str, loaded: LoadedPlaybook, step: PlannedStep,
                  outputs: Mapping[str, Mapping[str, Any]]) -> _StepResult:
        rec = self.store.get_step(run_id, step.id) or StepRecord(run_id, step.id, step.spec.uses)
        resuming_running = rec.status in (StepStatus.RUNNING, StepStatus.FAILED) and rec.applied
        self.listener.step_started(step.id, step.spec.uses)
        try:
            params = loaded.resolve_params(step, outputs, run_id)
        except MigratorError as exc:
            return self._step_failed(run_id, rec, exc)
        rec.params_hash = params_hash(params)
        rec.kind = step.spec.uses
        rec.error = None
        if rec.started_at is None:
            rec.started_at = time.time()
        rec.attempts += 1  # the first attempt's count is saved with the start: one commit less
        self.store.save_step(rec)
        instance: Step[Any] = step.kind(step.id, params)
        ctx = self._step_context(run_id, loaded, step, rec, outputs)
        if instance.wants_forecast:
            seconds, unknown = self._forecast_after(run_id, loaded, step.id)
            ctx.options = {**self.options, "forecast_seconds": seconds, "forecast_unestimated": unknown}
            self._event(run_id, step.id, "forecast", f"the steps after {step.id} are forecast to take {seconds:.0f}s"
                        + (f" (no estimate for {', '.join(unknown)})" if unknown else ""), seconds=seconds)
        policy = step.retry_policy(loaded.playbook)
        state = {"applied_here": resuming_running, "first_attempt": True}

        def attempt() -> tuple[dict[str, Any], str]:
            if not state["first_attempt"]:
                rec.attempts += 1
                self.store.save_step(rec)
            state["first_attempt"] = False
            ctx.raise_if_cancelled()
            check = instance.check(ctx)
            if check.done:
                if state["applied_here"]:
                    note = f"done (confirmed on re-check: {check.reason})"
                else:
                    note = f"already done: {check.reason}"
                result = dict(check.outputs)
            else:
                if not rec.applied:
                    rec.applied = True
                    rec.seq = self.store.next_seq(run_id)
                rec.status = StepStatus.RUNNING
                state["applied_here"] = True
                self._save_with_event(rec, "step.apply", f"step {step.id} applying ({check.reason})")
                result = dict(instance.apply(ctx) or {})
                ctx.items.flush()
                note = "applied"
            ctx.raise_if_cancelled()
            instance.verify(ctx)
            return result, note

        try:
            result, note = self._retrying(policy, run_id, step.id)(attempt)
        except LockLost:
            # Another runner holds the run now: stop everything here, write nothing, undo nothing.
            self.cancel_event.set()
            raise
        except BaseException as exc:
            try:
                ctx.items.flush()
            except Exception:
                log.warning("could not flush item checkpoints of %s", step.id, exc_info=True)
            # An interrupt is never a step failure, whatever the step raised while it was being stopped.
            if isinstance(exc, Cancelled) or (self._interrupted and self._abort is None and isinstance(exc, Exception)):
                rec.status = StepStatus.RUNNING if rec.applied else StepStatus.PENDING
                rec.error = "interrupted"
                self.store.save_step(rec)
                self._event(run_id, step.id, "step.interrupted", f"step {step.id} interrupted")
                self.listener.step_finished(step.id, "interrupted", None)
                return _StepResult(step.id, "interrupted", exc)
            if not isinstance(exc, Exception):
                raise
            return self._step_failed(run_id, rec, exc)
        rec.outputs = self._safe_outputs(step.id, result)
        rec.status = StepStatus.DONE
        rec.note = note
        rec.finished_at = time.time()
        self._save_with_event(rec, "step.done", f"step {step.id} done: {note}", attempts=rec.attempts,
                              seconds=round(rec.finished_at - (rec.started_at or rec.finished_at), 3))
        self.listener.step_finished(step.id, StepStatus.DONE, note)
        return _StepResult(step.id, StepStatus.DONE)

    def _step_failed(self, run_id: str, rec: StepRecord, exc: BaseException) -> _StepResult:
        rec.status = StepStatus.FAILED
        rec.error = self._describe_error(exc)
        rec.finished_at = time.time()
        self.store.save_step(rec)
        self._event(run_id, rec.step_id, "step.failed", f"step {rec.step_id} failed: {rec.error}",
                    error_type=type(exc).__name__, retryable=is_retryable(exc), attempts=rec.attempts)
        log.error("step %s failed: %s", rec.step_id, rec.error, exc_info=exc if not isinstance(
            exc, MigratorError) else None)
        self.listener.step_finished(rec.step_id, StepStatus.FAILED, rec.error)
        return _StepResult(rec.step_id, StepStatus.FAILED, exc)

    def _safe_outputs(self, step_id: str, outputs: dict[str, Any]) -> dict[str, Any]:
        import json

        try:
            json.dumps(outputs)
        except (TypeError, ValueError) as exc:
            raise StateError(f"step {step_id} returned outputs that are not JSON: {exc}") from exc
        return self.redactor.redact_obj(outputs, personal_data=False)

    def _retrying(self, policy: RetryPolicy, run_id: str, step_id: str) -> Retrying:
        stop: Any = stop_after_attempt(policy.attempts)
        if policy.budget is not None:
            stop = stop | stop_after_delay(policy.budget)
        backoff = wait_exponential_jitter(initial=policy.initial, max=policy.max, jitter=policy.jitter)

        def wait_for(state: RetryCallState) -> float:
            delay = backoff(state)
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, TransientError) and exc.retry_after:
                delay = max(delay, min(exc.retry_after, policy.max))
            return delay

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            message = (f"step {step_id} attempt {state.attempt_number} failed "
                       f"({self._describe_error(exc) if exc else '?'}); retrying in {delay:.1f}s")
            self._event(run_id, step_id, "step.retry", message, attempt=state.attempt_number)
            self.listener.message(message)

        return Retrying(stop=stop, wait=wait_for, retry=retry_if_exception(is_retryable), sleep=self.clock.sleep,
                        before_sleep=before_sleep, reraise=True)

    # -------------------------------------------------------------------------------------- forecast, deadline

    def _estimate(self, run_id: str, loaded: LoadedPlaybook, step: PlannedStep,
                  outputs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
        """Plans one step (no side effects) and returns its estimate, or None when it cannot be known yet."""
        try:
            params = loaded.try_resolve_params(step, outputs, run_id)
            if params is None:
                rough = step.kind.estimate_deferred(step.raw_params)
                if rough is None or rough.seconds is None:
                    return None
                return {"seconds": float(rough.seconds), "items": rough.items, "bytes": rough.bytes,
                        "basis": rough.basis, "at": time.time(), "noop": False}
            instance: Step[Any] = step.kind(step.id, params)
            ctx = self._context(run_id, step.id, loaded.environment_values(), outputs, MemoryItems(), MemoryMemo(),
                                dry_run=True)
            result = instance.plan(ctx)
        except Exception as exc:  # a forecast is advice: a step that cannot plan now is simply not estimated
            log.info("no estimate for %s: %s", step.id, self._describe_error(exc))
            return None
        if result.estimate.seconds is None:
            return None
        return {"seconds": float(result.estimate.seconds), "items": result.estimate.items,
                "bytes": result.estimate.bytes, "basis": result.estimate.basis, "at": time.time(),
                "noop": result.noop}

    def _record_forecast(self, run_id: str, loaded: LoadedPlaybook, step_ids: list[str]) -> dict[str, float | None]:
        """Estimates the given steps now and keeps each estimate beside the step, for forecast-vs-actual."""
        records = self.store.get_steps(run_id)
        outputs = {sid: r.outputs for sid, r in records.items() if r.status == StepStatus.DONE}
        wanted = set(step_ids)
        found: dict[str, float | None] = {}
        for step in _topological(loaded):
            if step.id not in wanted:
                continue
            estimate = self._estimate(run_id, loaded, step, outputs)
            rec = records.get(step.id) or StepRecord(run_id, step.id, step.spec.uses)
            if estimate is not None:
                rec.estimate = estimate
                self.store.save_step(rec)
            elif rec.estimate is None:
                self.store.save_step(rec)
            found[step.id] = estimate["seconds"] if estimate else (rec.estimate or {}).get("seconds")
        return found

    def _descendants(self, loaded: LoadedPlaybook, step_id: str) -> list[str]:
        return [s.id for s in loaded.steps if step_id in loaded.ancestors(s.id)]

    def _forecast_after(self, run_id: str, loaded: LoadedPlaybook, step_id: str) -> tuple[float, list[str]]:
        """Seconds the steps after ``step_id`` should take (longest chain of their estimates), re-planned now."""
        after = [sid for sid in self._descendants(loaded, step_id)
                 if (r := self.store.get_step(run_id, sid)) is None or r.status != StepStatus.DONE]
        estimates = self._record_forecast(run_id, loaded, after)
        unknown = [sid for sid in after if estimates.get(sid) is None]
        return _critical_path(loaded, {sid: estimates.get(sid) or 0.0 for sid in after}), unknown

    def _watch_deadlines(self, run_id: str, loaded: LoadedPlaybook, status: Mapping[str, str],
                         running: set[str]) -> None:
        """Aborts the run when the work left cannot end before a deadline an earlier step set.

        A step sets a deadline for the steps after it by giving an output ``deadline`` (ISO 8601); the window
        gate does so with the end of the read-only window less the time a rollback needs.
        """
        now = self.clock.now()
        for gate_id, st in status.items():
            if st != StepStatus.DONE:
                continue
            deadline_text = self._outputs_of(run_id, gate_id).get("deadline")
            if not deadline_text:
                continue
            try:
                deadline = datetime.fromisoformat(str(deadline_text))
            except ValueError:
                continue
            left = [sid for sid in self._descendants(loaded, gate_id) if status.get(sid) != StepStatus.DONE]
            if not left:
                continue
            remaining: dict[str, float] = {}
            for sid in left:
                rec = self.store.get_step(run_id, sid)
                est = float((rec.estimate or {}).get("seconds") or 0.0) if rec else 0.0
                if sid in running and rec is not None and rec.started_at is not None:
                    est = max(est - (time.time() - rec.started_at), 0.0)
                remaining[sid] = est
            need = _critical_path(loaded, remaining)
            if now >= deadline or (now.timestamp() + need) > deadline.timestamp():
                why = "passed" if now >= deadline else f"cannot be met: about {need:.0f}s of work is left"
                self._abort = DeadlineOverrun(
                    f"the deadline set by {gate_id} ({deadline.isoformat()}) {why}; aborting to roll back in time",
                    step_id=gate_id, hint="choose a longer window or a quieter daypart, then run again")
                self._abort_step = sorted(running)[0] if running else gate_id
                self._event(run_id, gate_id, "watchdog.abort", self._abort.message, now=now.isoformat())
                self.listener.message(self._abort.message)
                self.cancel_event.set()
                return

    # ------------------------------------------------------------------------------------------ compensation

    def _guard_rollback(self, run_id: str, loaded: LoadedPlaybook, todo: list[StepRecord],
                        outputs: Mapping[str, Mapping[str, Any]]) -> None:
        """Asks every step about to be undone whether the rollback may go ahead, before anything is undone:
        raises :class:`CompensationRefused` (the run stays as it is) when one says no."""
        for rec in todo:
            step = loaded.by_id.get(rec.step_id)
            if step is None:
                continue
            try:
                params = loaded.resolve_params(step, {k: v for k, v in outputs.items() if k != step.id}, run_id)
            except MigratorError:
                continue  # the undo itself says why it cannot go on
            instance: Step[Any] = step.kind(step.id, params)
            ctx = self._step_context(run_id, loaded, step, rec, outputs)
            try:
                instance.guard_rollback(ctx)
            except CompensationRefused as exc:
                message = f"rollback refused by step {step.id}: {self._describe_error(exc)}; nothing was undone"
                self._event(run_id, step.id, "rollback.refused", message)
                self.listener.message(message)
                raise

    def _compensate(self, run_id: str, loaded: LoadedPlaybook) -> tuple[bool, str | None]:
        records = self.store.get_steps(run_id)
        todo = sorted((r for r in records.values() if r.applied and r.status != StepStatus.COMPENSATED),
                      key=lambda r: r.seq or 0, reverse=True)
        by_id = loaded.by_id
        outputs = {sid: r.outputs for sid, r in records.items()}
        self._guard_rollback(run_id, loaded, todo, outputs)
        clean = True
        for rec in todo:
            step = by_id.get(rec.step_id)
            if step is None:
                return False, f"step {rec.step_id} is no longer in the playbook; it cannot be undone from here"
            try:
                params = loaded.resolve_params(step, {k: v for k, v in outputs.items() if k != step.id}, run_id)
            except MigratorError as exc:
                return False, f"step {step.id} cannot be undone: {self._describe_error(exc)}"
            instance: Step[Any] = step.kind(step.id, params)
            if instance.irreversible:
                clean = False
                self._event(run_id, step.id, "step.irreversible", f"step {step.id} cannot be undone (irreversible)")
                self.listener.message(f"step {step.id} cannot be undone: its kind {step.spec.uses} is irreversible")
                continue
            self.listener.step_started(step.id, f"undo {step.spec.uses}")
            rec.status = StepStatus.COMPENSATING
            self.store.save_step(rec)
            try:
                ctx = self._step_context(run_id, loaded, step, rec, outputs)
                self._fence_check()
                self._retrying(step.retry_policy(loaded.playbook), run_id, step.id)(instance.compensate, ctx)
                ctx.items.flush()
            except LockLost:
                raise
            except Exception as exc:
                rec.status = StepStatus.COMPENSATION_FAILED
                rec.error = self._describe_error(exc)
                self.store.save_step(rec)
                self._event(run_id, step.id, "step.compensation_failed",
                            f"undoing step {step.id} failed: {rec.error}")
                self.listener.step_finished(step.id, StepStatus.COMPENSATION_FAILED, rec.error)
                if not isinstance(exc, CompensationError):
                    log.error("undoing %s failed", step.id, exc_info=exc)
                return False, f"undoing step {step.id} failed: {rec.error}"
            rec.status = StepStatus.COMPENSATED
            rec.finished_at = time.time()
            self.store.save_step(rec)
            self._event(run_id, step.id, "step.compensated", f"step {step.id} undone")
            self.listener.step_finished(step.id, StepStatus.COMPENSATED, "undone")
        return clean, None if clean else "some steps cannot be undone (irreversible)"

    # ---------------------------------------------------------------------------------------------- plumbing

    def _context(self, run_id: str, step_id: str, environment: Mapping[str, Any],
                 outputs: Mapping[str, Mapping[str, Any]], items: Any, memo: Any, *,
                 dry_run: bool = False) -> RunContext:
        return RunContext(
            run_id=run_id, step_id=step_id, environment=environment, outputs=outputs, items=items, memo=memo,
            clock=self.clock, log=logging.getLogger(f"migrator.step.{step_id}"), redactor=self.redactor,
            dry_run=dry_run, options=self.options, resources=self._resources, cancel_event=self.cancel_event,
            on_message=self.listener.message, fence_check=None if dry_run else self._fence_check,
            lock_generation=self._keeper.lock.generation if self._keeper is not None else 0)

    def _step_context(self, run_id: str, loaded: LoadedPlaybook, step: PlannedStep, rec: StepRecord,
                      outputs: Mapping[str, Mapping[str, Any]]) -> RunContext:
        def on_progress(items: StoreItems) -> None:
            self.listener.progress(step.id, items.done_items, items.total_items, items.done_bytes,
                                   items.total_bytes)

        ctx = self._context(run_id, step.id, loaded.environment_values(), outputs, None, StoreMemo(self.store, rec))
        ctx.items = StoreItems(self.store, run_id, step.id, batch_size=loaded.playbook.checkpoint_batch,
                               on_progress=on_progress, cancel_check=ctx.raise_if_cancelled,
                               fence_check=self._fence_check)
        if step.spec.timeout is not None:
            ctx.deadline = self.clock.monotonic() + step.spec.timeout
        ctx.on_event = lambda type, message, data: self._event(run_id, step.id, type, message, **data)
        return ctx

    def _event(self, run_id: str, step_id: str | None, type: str, message: str, **data: Any) -> None:
        message = self.redactor.redact(message)
        self.store.add_event(run_id, step_id, type, message, self.redactor.redact_obj(data))
        log.info("%s", message)

    def _save_with_event(self, rec: StepRecord, type: str, message: str, **data: Any) -> None:
        """Saves the step and adds an event about it in one state-store transaction (one commit, not two)."""
        message = self.redactor.redact(message)
        self.store.save_step(rec, (type, message, self.redactor.redact_obj(data)))
        log.info("%s", message)

    def _command_event(self, run_id: str) -> None:
        """Keeps the exact command line, so a support bundle can say how to reproduce."""
        command = self.options.get("command_line")
        if command:
            self._event(run_id, None, "command", f"command: {command}", command=command)

    def _describe_error(self, exc: BaseException) -> str:
        text = exc.one_line() if isinstance(exc, MigratorError) else f"{type(exc).__name__}: {exc}"
        return self.redactor.redact(text)

    def _seed_redactor(self, loaded: LoadedPlaybook) -> None:
        import os

        for name in loaded.env_var_names:
            self.redactor.add(os.environ.get(name))

    def _public_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items()
                if isinstance(v, (str, int, float, bool, type(None))) and k != "command_line"}

    def _close_resources(self) -> None:
        for key, resource in list(self._resources.items()):
            close = getattr(resource, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.debug("closing %s failed", key, exc_info=True)
        self._resources.clear()

    def _run_logging(self, run_id: str) -> _RunLog:
        return _RunLog(self.log_dir, run_id, self.redactor)


class _RunLog:
    """Attaches a redacting file handler (``<log_dir>/<run_id>.log``) for the length of a command."""

    def __init__(self, log_dir: Path | None, run_id: str, redactor: Redactor) -> None:
        self.path = log_dir / f"{run_id}.log" if log_dir else None
        self.redactor = redactor
        self.handler: logging.Handler | None = None

    def __enter__(self) -> _RunLog:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
            handler.addFilter(_RedactFilter(self.redactor))
            logger = logging.getLogger("migrator")
            logger.addHandler(handler)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
            self.handler = handler
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handler is not None:
            logging.getLogger("migrator").removeHandler(self.handler)
            self.handler.close()


def _fill_view(view: StepPlanView, done: bool, reason: str, result: PlanResult) -> None:
    view.status = "done" if done or result.noop else "change"
    view.reason = result.reason or reason
    view.changes = list(result.changes)
    view.estimate_seconds = 0.0 if done else result.estimate.seconds
    view.estimate_items = result.estimate.items
    view.estimate_bytes = result.estimate.bytes
    view.basis = result.estimate.basis
    view.details = dict(result.details)


def _taken_up_again(loaded: LoadedPlaybook, rerun: tuple[str, ...]) -> set[str]:
    """The steps ``resume --rerun`` takes up again: those named, and every step that needs one of them, directly or
    not (their inputs may change). Refuses a name the playbook does not have."""
    unknown = sorted(set(rerun) - loaded.by_id.keys())
    if unknown:
        raise InputError(f"--rerun {unknown[0]}: the playbook has no step {unknown[0]!r}",
                         hint=f"its steps: {', '.join(s.id for s in loaded.steps)}")
    named = set(rerun)
    return {s.id for s in loaded.steps if s.id in named or named & loaded.ancestors(s.id)}


def _critical_path(loaded: LoadedPlaybook, seconds: Mapping[str, float]) -> float:
    """The longest chain of ``seconds`` through the steps named in it, following ``needs``."""
    ends: dict[str, float] = {}
    for step in _topological(loaded):
        if step.id in seconds:
            start = max((ends[d] for d in step.needs if d in ends), default=0.0)
            ends[step.id] = start + seconds[step.id]
    return max(ends.values(), default=0.0)


def _topological(loaded: LoadedPlaybook) -> list[PlannedStep]:
    order: list[PlannedStep] = []
    placed: set[str] = set()
    remaining = list(loaded.steps)
    while remaining:
        for step in remaining:
            if all(d in placed for d in step.needs):
                order.append(step)
                placed.add(step.id)
                remaining.remove(step)
                break
    return order


def lock_ttl_from_environment() -> float:
    """The run lock's time to live: ``MIGRATOR_LOCK_TTL`` seconds, or :data:`LOCK_TTL_SECONDS`.

    A shorter one lets a successor take over a frozen runner sooner, at the cost of a heartbeat every third of it.
    """
    import math
    import os

    text = os.environ.get("MIGRATOR_LOCK_TTL")
    if not text:
        return LOCK_TTL_SECONDS
    try:
        ttl = float(text)
    except ValueError:
        ttl = math.nan
    if not math.isfinite(ttl) or not 1.0 <= ttl <= 86400.0:
        raise InputError(f"MIGRATOR_LOCK_TTL={text!r}: not a number of seconds from 1 to 86400")
    return ttl


def new_run_id(loaded: LoadedPlaybook) -> str:
    tenant = loaded.environment.tenant.name if loaded.environment else loaded.playbook.name
    # a run id names the log file: a playbook's free-text name keeps only what a file name can hold, and is short
    tenant = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in tenant)[:63].strip(".-")
    tenant = tenant or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{tenant}-{stamp}-{uuid.uuid4().hex[:6]}"
