"""Compensation: undoing, newest first, every step this run applied, after asking each of them whether the rollback
may go ahead at all (``guard_rollback``). A step whose kind is irreversible is reported, not undone."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from migrator.errors import CompensationError, CompensationRefused, LockLost, MigratorError
from migrator.playbook import LoadedPlaybook, PlannedStep
from migrator.runner.attempt import retrying
from migrator.runner.core import RunCore
from migrator.state import StepRecord, StepStatus
from migrator.step import Step

log = logging.getLogger("migrator")


class Compensator:
    """Rolls a run back: the ``rollback`` command, and ``on_failure: rollback``."""

    def __init__(self, core: RunCore) -> None:
        self.core = core

    def guard_rollback(self, run_id: str, loaded: LoadedPlaybook, todo: list[StepRecord],
                       outputs: Mapping[str, Mapping[str, Any]]) -> None:
        """Asks every step about to be undone whether the rollback may go ahead, before anything is undone:
        raises :class:`CompensationRefused` (the run stays as it is) when one says no."""
        core = self.core
        for rec in todo:
            step = loaded.by_id.get(rec.step_id)
            if step is None:
                continue
            try:
                instance = _instance(run_id, loaded, step, outputs)
            except MigratorError:
                continue  # the undo itself says why it cannot go on
            ctx = core.step_context(run_id, loaded, step, rec, outputs)
            try:
                instance.guard_rollback(ctx)
            except CompensationRefused as exc:
                message = f"rollback refused by step {step.id}: {core.describe_error(exc)}; nothing was undone"
                core.event(run_id, step.id, "rollback.refused", message)
                core.listener.message(message)
                raise

    def compensate(self, run_id: str, loaded: LoadedPlaybook) -> tuple[bool, str | None]:
        """Undoes every step this run applied, newest first; returns whether all could be undone, and why not."""
        core = self.core
        records = core.store.get_steps(run_id)
        todo = sorted((r for r in records.values() if r.applied and r.status != StepStatus.COMPENSATED),
                      key=lambda r: r.seq or 0, reverse=True)
        outputs = {sid: r.outputs for sid, r in records.items()}
        self.guard_rollback(run_id, loaded, todo, outputs)
        clean = True
        for rec in todo:
            step = loaded.by_id.get(rec.step_id)
            if step is None:
                return False, f"step {rec.step_id} is no longer in the playbook; it cannot be undone from here"
            try:
                instance = _instance(run_id, loaded, step, outputs)
            except MigratorError as exc:
                return False, f"step {step.id} cannot be undone: {core.describe_error(exc)}"
            if instance.irreversible:
                clean = False
                core.event(run_id, step.id, "step.irreversible", f"step {step.id} cannot be undone (irreversible)")
                core.listener.message(f"step {step.id} cannot be undone: its kind {step.spec.uses} is irreversible")
                continue
            error = self._undo(run_id, loaded, step, rec, instance, outputs)
            if error is not None:
                return False, error
        return clean, None if clean else "some steps cannot be undone (irreversible)"

    def _undo(self, run_id: str, loaded: LoadedPlaybook, step: PlannedStep, rec: StepRecord, instance: Step[Any],
              outputs: Mapping[str, Mapping[str, Any]]) -> str | None:
        """Compensates one step (retried as its policy says); returns why it failed, or None."""
        core = self.core
        core.listener.step_started(step.id, f"undo {step.spec.uses}")
        rec.status = StepStatus.COMPENSATING
        core.store.save_step(rec)
        try:
            ctx = core.step_context(run_id, loaded, step, rec, outputs)
            core.fence_check()
            retrying(core, step.retry_policy(loaded.playbook), run_id, step.id)(instance.compensate, ctx)
            ctx.items.flush()
        except LockLost:
            raise
        except Exception as exc:
            rec.status = StepStatus.COMPENSATION_FAILED
            rec.error = core.describe_error(exc)
            core.store.save_step(rec)
            core.event(run_id, step.id, "step.compensation_failed", f"undoing step {step.id} failed: {rec.error}")
            core.listener.step_finished(step.id, StepStatus.COMPENSATION_FAILED, rec.error)
            if not isinstance(exc, CompensationError):
                log.error("undoing %s failed", step.id, exc_info=exc)
            return f"undoing step {step.id} failed: {rec.error}"
        rec.status = StepStatus.COMPENSATED
        rec.finished_at = core.clock.timestamp()
        core.store.save_step(rec)
        core.event(run_id, step.id, "step.compensated", f"step {step.id} undone")
        core.listener.step_finished(step.id, StepStatus.COMPENSATED, "undone")
        return None


def _instance(run_id: str, loaded: LoadedPlaybook, step: PlannedStep,
              outputs: Mapping[str, Mapping[str, Any]]) -> Step[Any]:
    """The step as it is undone: its params resolved with the outputs of the other steps."""
    params = loaded.resolve_params(step, {k: v for k, v in outputs.items() if k != step.id}, run_id)
    instance: Step[Any] = step.kind(step.id, params)
    return instance
