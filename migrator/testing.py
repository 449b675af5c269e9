"""Run one step kind outside a playbook: an in-memory :class:`~migrator.step.StepContext` for tests.

The runner's own context writes to the state store; this one keeps items and memo in dictionaries, so a step's
logic can be exercised against real components (Azurite, PostgreSQL, BIND) without a run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from migrator.clock import Clock
from migrator.errors import Cancelled
from migrator.secrets import Redactor, Secret
from migrator.step import CheckResult, ItemRecord, PlanResult, Step


class MemoryItems:
    """A thread-safe dict of :class:`ItemRecord`; counts every ``record`` call in ``writes``."""

    def __init__(self) -> None:
        self._items: dict[str, ItemRecord] = {}
        self._lock = threading.Lock()
        self.writes = 0
        self.total_items: int | None = None
        self.total_bytes: int | None = None

    def record(self, key: str, status: str = "done", *, bytes: int = 0, checksum: str | None = None,
               detail: Any = None) -> None:
        with self._lock:
            self._items[key] = ItemRecord(key, status, bytes, checksum, detail)
            self.writes += 1

    def flush(self) -> None:
        return None

    def get(self, key: str) -> ItemRecord | None:
        with self._lock:
            return self._items.get(key)

    def keys(self, status: str | None = "done") -> set[str]:
        with self._lock:
            return {k for k, r in self._items.items() if status is None or r.status == status}

    def iter(self, status: str | None = None) -> Iterator[ItemRecord]:
        with self._lock:
            records = list(self._items.values())
        return iter([r for r in records if status is None or r.status == status])

    def count(self, status: str | None = "done") -> int:
        return len(self.keys(status))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def set_total(self, items: int | None = None, bytes: int | None = None) -> None:
        self.total_items, self.total_bytes = items, bytes


class MemoryMemo:
    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(initial or {})

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._data[key] = value

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._data)


@dataclass
class MemoryContext:
    """A :class:`~migrator.step.StepContext` whose state lives in memory."""

    step_id: str = "step"
    run_id: str = "test-run"
    environment: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    items: MemoryItems = field(default_factory=MemoryItems)
    memo: MemoryMemo = field(default_factory=MemoryMemo)
    clock: Clock = field(default_factory=Clock)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("migrator.test"))
    redactor: Redactor = field(default_factory=Redactor)
    dry_run: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    lock_generation: int = 1

    def reveal(self, secret: Secret | str | None) -> str | None:
        if isinstance(secret, Secret):
            return secret.reveal(self.redactor)
        return secret

    def raise_if_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled(f"{self.step_id}: cancelled", step_id=self.step_id)

    def event(self, type: str, message: str, **data: Any) -> None:
        self.events.append((type, message, data))

    def progress(self, message: str | None = None) -> None:
        return None


def run_step(step: Step[Any], ctx: MemoryContext) -> tuple[CheckResult, Mapping[str, Any]]:
    """check → apply → verify, as the runner does for one attempt; returns the first check and the outputs."""
    state = step.check(ctx)
    if state.done:
        return state, dict(state.outputs)
    outputs = dict(step.apply(ctx) or {})
    ctx.items.flush()
    step.verify(ctx)
    return state, outputs


def plan_step(step: Step[Any], ctx: MemoryContext) -> PlanResult:
    ctx.dry_run = True
    return step.plan(ctx)
