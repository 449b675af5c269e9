"""The deadline watchdog: aborts the run when the work left cannot end before a deadline an earlier step set.

A step sets a deadline for the steps after it by giving an output ``deadline`` (ISO 8601); the window gate does so
with the end of the read-only window less the time a rollback needs. The scheduler asks the watchdog every
:attr:`Watchdog.interval` seconds while steps run. Everything is read on the run's clock (``RunCore.clock``):
the deadline's now, and how long a running step has been at it (its start is kept on the same clock).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from migrator.errors import DeadlineOverrun
from migrator.playbook import LoadedPlaybook
from migrator.runner.core import RunCore
from migrator.runner.planning import critical_path, descendants
from migrator.state import StepStatus


class Watchdog:
    """Looks at the deadlines of done steps against the critical path of the estimates of the steps left."""

    #: How often (seconds) the scheduler wakes to look at deadlines while steps run.
    interval = 0.5

    def __init__(self, core: RunCore) -> None:
        self.core = core

    def watch(self, run_id: str, loaded: LoadedPlaybook, status: Mapping[str, str], running: set[str],
              outputs_of: Callable[[str], Mapping[str, Any]] | None = None) -> None:
        """Sets the core's ``abort`` (and cancels the run) when the work left cannot end before a deadline.
        ``outputs_of`` gives a done step's outputs (default: read from the state store)."""
        now = self.core.clock.now()
        for gate_id, st in status.items():
            if st != StepStatus.DONE:
                continue
            done = outputs_of(gate_id) if outputs_of is not None else self.core.outputs_of(run_id, gate_id)
            deadline = self._deadline(done)
            if deadline is None:
                continue
            left = [sid for sid in descendants(loaded, gate_id) if status.get(sid) != StepStatus.DONE]
            if not left:
                continue
            need = critical_path(loaded, self._remaining(run_id, left, running, now.timestamp()))
            if now >= deadline or (now.timestamp() + need) > deadline.timestamp():
                why = "passed" if now >= deadline else f"cannot be met: about {need:.0f}s of work is left"
                self._abort(run_id, gate_id, f"the deadline set by {gate_id} ({deadline.isoformat()}) {why}; "
                            "aborting to roll back in time", now, running)
                return

    @staticmethod
    def _deadline(outputs: Mapping[str, Any]) -> datetime | None:
        """The deadline a done step set (its output ``deadline``, in ``outputs``), if it set one."""
        text = outputs.get("deadline")
        if not text:
            return None
        try:
            return datetime.fromisoformat(str(text))
        except ValueError:
            return None

    def _remaining(self, run_id: str, left: list[str], running: set[str], now: float) -> dict[str, float]:
        """Seconds of work each step left should still take: its estimate, less what a running step has done."""
        remaining: dict[str, float] = {}
        for sid in left:
            rec = self.core.store.get_step(run_id, sid)
            est = float((rec.estimate or {}).get("seconds") or 0.0) if rec else 0.0
            if sid in running and rec is not None and rec.started_at is not None:
                est = max(est - (now - rec.started_at), 0.0)
            remaining[sid] = est
        return remaining

    def _abort(self, run_id: str, gate_id: str, message: str, now: datetime, running: set[str]) -> None:
        core = self.core
        core.abort = DeadlineOverrun(message, step_id=gate_id,
                                     hint="choose a longer window or a quieter daypart, then run again")
        core.abort_step = sorted(running)[0] if running else gate_id
        core.event(run_id, gate_id, "watchdog.abort", core.abort.message, now=now.isoformat())
        core.listener.message(core.abort.message)
        core.cancel_event.set()
