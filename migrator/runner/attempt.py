"""One step's turn: resolve its params, ``check``, write RUNNING, ``apply``, flush its items, ``verify``, write
DONE. Transient errors are retried with exponential backoff and jitter (tenacity), each retry starting again from
``check``; permanent ones fail at once. An interrupt is never a failure: the step stays resumable."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_exponential_jitter

from migrator.errors import Cancelled, LockLost, MigratorError, StateError, TransientError, is_retryable
from migrator.playbook import LoadedPlaybook, PlannedStep, RetryPolicy, params_hash
from migrator.runner.context import RunContext
from migrator.runner.core import RunCore
from migrator.runner.outcome import EngineStatus, StepResult
from migrator.runner.planning import Planner
from migrator.state import StepRecord, StepStatus
from migrator.step import Step

log = logging.getLogger("migrator")


@dataclass
class _Turn:
    """One step's turn through its attempts: what each attempt needs, and what the attempts before it did."""

    core: RunCore
    run_id: str
    step: PlannedStep
    rec: StepRecord
    instance: Step[Any]
    ctx: RunContext
    #: This process applied the step, or found it RUNNING (applied by an earlier one): a check that finds it done
    #: confirms the apply instead of finding the work already there.
    applied_here: bool
    first_attempt: bool = True

    def __call__(self) -> tuple[dict[str, Any], str]:
        """One attempt: check, then apply unless done, then verify; returns the outputs and a note."""
        rec, ctx, instance = self.rec, self.ctx, self.instance
        if not self.first_attempt:
            rec.attempts += 1
            self.core.store.save_step(rec)
        self.first_attempt = False
        ctx.raise_if_cancelled()
        check = instance.check(ctx)
        if check.done:
            note = (f"done (confirmed on re-check: {check.reason})" if self.applied_here
                    else f"already done: {check.reason}")
            result = dict(check.outputs)
        else:
            if not rec.applied:
                rec.applied = True
                rec.seq = self.core.store.next_seq(self.run_id)
            rec.status = StepStatus.RUNNING
            self.applied_here = True
            self.core.save_with_event(rec, "step.apply", f"step {self.step.id} applying ({check.reason})")
            result = dict(instance.apply(ctx) or {})
            ctx.items.flush()
            note = "applied"
        ctx.raise_if_cancelled()
        instance.verify(ctx)
        return result, note


class Attempts:
    """Runs one step to DONE, FAILED or interrupted, retrying its transient faults as its policy says."""

    def __init__(self, core: RunCore, planner: Planner) -> None:
        self.core = core
        self.planner = planner

    def run_step(self, run_id: str, loaded: LoadedPlaybook, step: PlannedStep,
                 outputs: Mapping[str, Mapping[str, Any]]) -> StepResult:
        core = self.core
        rec = core.store.get_step(run_id, step.id) or StepRecord(run_id, step.id, step.spec.uses)
        resuming_running = rec.status in (StepStatus.RUNNING, StepStatus.FAILED) and rec.applied
        core.listener.step_started(step.id, step.spec.uses)
        try:
            params = loaded.resolve_params(step, outputs, run_id)
        except MigratorError as exc:
            return self.step_failed(run_id, rec, exc)
        rec.params_hash = params_hash(params)
        rec.kind = step.spec.uses
        rec.error = None
        if rec.started_at is None:
            rec.started_at = core.clock.timestamp()
        rec.attempts += 1  # the first attempt's count is saved with the start: one commit less
        core.store.save_step(rec)
        instance: Step[Any] = step.kind(step.id, params)
        ctx = core.step_context(run_id, loaded, step, rec, outputs)
        if instance.wants_forecast:
            self._forecast(run_id, loaded, step, ctx)
        turn = _Turn(core, run_id, step, rec, instance, ctx, applied_here=resuming_running)
        try:
            result, note = retrying(core, step.retry_policy(loaded.playbook), run_id, step.id)(turn)
        except LockLost:
            # Another runner holds the run now: stop everything here, write nothing, undo nothing.
            core.cancel_event.set()
            raise
        except BaseException as exc:
            return self._stopped(run_id, step, rec, ctx, exc)
        rec.outputs = self._safe_outputs(step.id, result)
        rec.status = StepStatus.DONE
        rec.note = note
        rec.finished_at = core.clock.timestamp()
        core.save_with_event(rec, "step.done", f"step {step.id} done: {note}", attempts=rec.attempts,
                             seconds=round(rec.finished_at - (rec.started_at or rec.finished_at), 3))
        core.listener.step_finished(step.id, StepStatus.DONE, note)
        return StepResult(step.id, StepStatus.DONE)

    def _forecast(self, run_id: str, loaded: LoadedPlaybook, step: PlannedStep, ctx: RunContext) -> None:
        """Gives a step that wants it the forecast of the steps after it, re-planned now."""
        seconds, unknown = self.planner.forecast_after(run_id, loaded, step.id)
        ctx.options = {**self.core.options, "forecast_seconds": seconds, "forecast_unestimated": unknown}
        self.core.event(run_id, step.id, "forecast", f"the steps after {step.id} are forecast to take {seconds:.0f}s"
                        + (f" (no estimate for {', '.join(unknown)})" if unknown else ""), seconds=seconds)

    def _stopped(self, run_id: str, step: PlannedStep, rec: StepRecord, ctx: RunContext,
                 exc: BaseException) -> StepResult:
        """A turn that raised: interrupted (resumable) or failed; anything but an exception goes on up."""
        core = self.core
        try:
            ctx.items.flush()
        except Exception:
            log.warning("could not flush item checkpoints of %s", step.id, exc_info=True)
        # An interrupt is never a step failure, whatever the step raised while it was being stopped.
        if isinstance(exc, Cancelled) or (core.interrupted and core.abort is None and isinstance(exc, Exception)):
            rec.status = StepStatus.RUNNING if rec.applied else StepStatus.PENDING
            rec.error = "interrupted"
            core.store.save_step(rec)
            core.event(run_id, step.id, "step.interrupted", f"step {step.id} interrupted")
            core.listener.step_finished(step.id, EngineStatus.INTERRUPTED, None)
            return StepResult(step.id, EngineStatus.INTERRUPTED, exc)
        if not isinstance(exc, Exception):
            raise exc
        return self.step_failed(run_id, rec, exc)

    def step_failed(self, run_id: str, rec: StepRecord, exc: BaseException) -> StepResult:
        rec.status = StepStatus.FAILED
        rec.error = self.core.describe_error(exc)
        rec.finished_at = self.core.clock.timestamp()
        self.core.store.save_step(rec)
        self.core.event(run_id, rec.step_id, "step.failed", f"step {rec.step_id} failed: {rec.error}",
                    error_type=type(exc).__name__, retryable=is_retryable(exc), attempts=rec.attempts)
        log.error("step %s failed: %s", rec.step_id, rec.error, exc_info=exc if not isinstance(
            exc, MigratorError) else None)
        self.core.listener.step_finished(rec.step_id, StepStatus.FAILED, rec.error)
        return StepResult(rec.step_id, StepStatus.FAILED, exc)

    def _safe_outputs(self, step_id: str, outputs: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(outputs)
        except (TypeError, ValueError) as exc:
            raise StateError(f"step {step_id} returned outputs that are not JSON: {exc}") from exc
        redacted: dict[str, Any] = self.core.redactor.redact_obj(outputs, personal_data=False)
        return redacted


def retrying(core: RunCore, policy: RetryPolicy, run_id: str, step_id: str) -> Retrying:
    """Retries a callable on the transient faults ``policy`` allows, sleeping on the run's clock; each retry is an
    event, and a message to the listener."""
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
                   f"({core.describe_error(exc) if exc else '?'}); retrying in {delay:.1f}s")
        core.event(run_id, step_id, "step.retry", message, attempt=state.attempt_number)
        core.listener.message(message)

    return Retrying(stop=stop, wait=wait_for, retry=retry_if_exception(is_retryable), sleep=core.clock.sleep,
                    before_sleep=before_sleep, reraise=True)
