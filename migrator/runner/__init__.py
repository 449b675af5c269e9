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

One module per job:

``commands``      :class:`Runner`: ``run``, ``resume``, ``rollback``, ``plan``; what a command holds while it works
``scheduler``     which step runs when; settling the run (succeeded, failed, rolled back, interrupted); ``--rerun``
``attempt``       one step's turn: check, apply, verify, retried on transient faults
``compensation``  undoing what the run applied, newest first, after ``guard_rollback``
``planning``      the dry-run, the forecast of steps, the critical path
``watchdog``      aborting when the work left cannot meet a deadline an earlier step set
``lock``          the lock's heartbeat and lease check, fencing, ``MIGRATOR_LOCK_TTL``
``context``       :class:`RunContext` and the step's items and memo in the state store
``memory``        items and memo in memory (the dry-run's; :mod:`migrator.testing` uses them too)
``core``          what the parts share: store, clock, listener, redactor, cancel flag, resources, events
``outcome``       :class:`Listener`, :class:`RunOutcome`, :class:`StepPlanView`, the engine's own statuses
``runlog``        the redacting run log
"""

from __future__ import annotations

from migrator.runner.commands import Runner, new_run_id
from migrator.runner.context import RunContext, StoreItems, StoreMemo
from migrator.runner.lock import lock_ttl_from_environment
from migrator.runner.memory import MemoryItems, MemoryMemo
from migrator.runner.outcome import EngineStatus, Listener, NullListener, RunOutcome, StepPlanView

__all__ = [
    "EngineStatus",
    "Listener",
    "MemoryItems",
    "MemoryMemo",
    "NullListener",
    "RunContext",
    "RunOutcome",
    "Runner",
    "StepPlanView",
    "StoreItems",
    "StoreMemo",
    "lock_ttl_from_environment",
    "new_run_id",
]
