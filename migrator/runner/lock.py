"""The run's lock while a command holds it: the heartbeat, the lease check before each checkpoint, and fencing.

Every acquisition of a run's lock gets the next *generation*; every state write checks, in its own transaction,
that the lock is still this runner's (see :mod:`migrator.state`). :class:`LockKeeper` renews the lease in the
background and guards it in the foreground; :func:`fenced` and :func:`fenced_outcome` turn a lost lock into the
``lock_lost`` outcome (exit code 3) after the steps stopped, with nothing more written or undone.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from migrator.errors import ExitCode, InputError, LockLost
from migrator.runner.outcome import EngineStatus, Listener, RunOutcome
from migrator.state import LOCK_TTL_SECONDS, LockInfo, StateStore

log = logging.getLogger("migrator")


class Fenced(Exception):
    """Carries the outcome of a command whose runner lost its lock, past every frame that would write state."""

    def __init__(self, outcome: RunOutcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def fenced_outcome(method: Callable[..., RunOutcome]) -> Callable[..., RunOutcome]:
    """A command that lost its lock returns the ``lock_lost`` outcome (exit 3) instead of going on."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> RunOutcome:
        try:
            return method(*args, **kwargs)
        except Fenced as fenced:
            return fenced.outcome

    return wrapper


@contextmanager
def fenced(run_id: str, cancel: threading.Event, listener: Listener) -> Iterator[None]:
    """Turns :class:`LockLost` (this runner's lock generation taken over or broken) into an outcome, after
    the steps still running stopped; nothing more is written or undone: the run belongs to the new holder."""
    try:
        yield
    except LockLost as exc:
        cancel.set()
        listener.message(exc.one_line())
        log.warning("%s", exc.one_line())
        raise Fenced(RunOutcome(run_id, EngineStatus.LOCK_LOST, ExitCode.LOCK_HELD, error=exc.one_line())) from exc


def lease_clock() -> float:
    """Seconds on a clock that keeps counting while the process is stopped and while the machine sleeps.

    Deliberately not the run's injectable clock: the lease guards against real pauses of this process (SIGSTOP,
    a frozen VM), which only the machine's own clock sees."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


class LockKeeper:
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
        self._last_beat = lease_clock()
        self._thread = threading.Thread(target=self._beat, name="migrator-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> bool:
        """One heartbeat; False when the lock is no longer ours. Store faults propagate."""
        with self._beat_lock:
            if self.lost.is_set():
                return False
            started = lease_clock()
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
            except Exception as exc:  # a passing store fault: the next beat tries again before expiry
                log.warning("lock heartbeat failed (%s); retrying", type(exc).__name__)

    def confirm(self) -> None:
        """Raises :class:`LockLost` unless this runner still holds the lock, renewing a lease that went stale."""
        if not self.lost.is_set() and lease_clock() - self._last_beat <= self.ttl / 2.0:
            return
        try:
            held = self._renew()
        except Exception as exc:
            # The store cannot say; past the lease's expiry another runner may have it: do nothing more.
            if lease_clock() - self._last_beat > self.ttl:
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



def lock_ttl_from_environment() -> float:
    """The run lock's time to live: ``MIGRATOR_LOCK_TTL`` seconds, or :data:`LOCK_TTL_SECONDS`.

    A shorter one lets a successor take over a frozen runner sooner, at the cost of a heartbeat every third of it.
    """
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
