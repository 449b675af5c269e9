"""The context the runner hands a step (:class:`RunContext`), with the step's item checkpoints and memo written to
the state store (:class:`StoreItems`, :class:`StoreMemo`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from migrator.clock import Clock
from migrator.errors import Cancelled, StepTimeout
from migrator.resources import RunResources
from migrator.secrets import Redactor, Secret
from migrator.state import StateStore, StepRecord
from migrator.step import ItemRecord


class StoreItems:
    """Item checkpoints of one step, buffered and written in batched transactions.

    A batch goes out when it holds ``batch_size`` records or ``interval`` seconds have passed since the last
    one, so a crash loses at most one batch: the items that were in flight. The interval is measured on the
    process's own monotonic clock, not the run's (injectable) one: it bounds real I/O, which a test's clock
    standing still must not stop.
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


class RevealsSecrets:
    """What every step context does with a secret param: reveals it through its redactor (which then redacts
    the value wherever it would appear)."""

    redactor: Redactor

    def reveal(self, secret: Secret | str | None) -> str | None:
        if isinstance(secret, Secret):
            return secret.reveal(self.redactor)
        return secret


@dataclass
class RunContext(RevealsSecrets):
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
    resources: RunResources
    cancel_event: threading.Event
    deadline: float | None = None
    on_event: Callable[[str, str, dict[str, Any]], None] | None = None
    on_message: Callable[[str], None] | None = None
    #: Raises :class:`LockLost` when this runner no longer holds the run's lock (None: no lock, a dry-run).
    fence_check: Callable[[], None] | None = None
    #: The generation of the run's lock this runner holds (0: none); providers that can make a write
    #: conditional on it do (the restore's marker table).
    lock_generation: int = 0

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

