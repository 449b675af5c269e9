"""Run one step kind outside a playbook: an in-memory :class:`~migrator.step.StepContext` for tests.

The runner's own context writes to the state store; this one keeps items and memo in memory (the engine's
:class:`~migrator.runner.MemoryItems` and :class:`~migrator.runner.MemoryMemo`, which the dry-run uses too), so
a step's logic can be exercised against real components (Azurite, PostgreSQL, BIND) without a run.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from migrator.clock import Clock
from migrator.errors import Cancelled
from migrator.resources import RunResources
from migrator.runner.context import RevealsSecrets
from migrator.runner.memory import MemoryItems, MemoryMemo
from migrator.secrets import Redactor
from migrator.step import CheckResult, PlanResult, Step

__all__ = ["MemoryContext", "MemoryItems", "MemoryMemo", "plan_step", "run_step"]


@dataclass
class MemoryContext(RevealsSecrets):
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
    resources: RunResources = field(default_factory=RunResources)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    lock_generation: int = 1

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
