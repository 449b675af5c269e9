"""Planning: the dry-run (``check`` and ``plan`` of every step, writing nothing in the tenant), the forecast of
steps (each estimate kept beside its step, for forecast against actual) and the critical path through the
estimates.

Every estimate a step returns with its work counted is priced here by the command's :class:`~migrator.estimator.
Rates`: the samples measured on this machine and kept in the state directory, with this command's own (the only
file a dry-run writes, and only where the state directory exists).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

from migrator.errors import ExitCode, InputError, MigratorError
from migrator.estimator import RATES_KEY, Rates, priced, rates_file
from migrator.playbook import LoadedPlaybook, PlannedStep
from migrator.runner.core import RunCore
from migrator.runner.memory import MemoryItems, MemoryMemo
from migrator.runner.outcome import StepPlanView
from migrator.state import StateStore, StepRecord, StepStatus
from migrator.step import Estimate, PlanResult, Step

log = logging.getLogger("migrator")


class Planner:
    """Plans steps without side effects: the whole playbook for ``migrator plan``, the steps left for a forecast."""

    def __init__(self, core: RunCore) -> None:
        self.core = core

    def rates(self) -> Rates:
        """The command's rates: the cache of the state directory (a run's store, else ``--state`` as the options
        name it, ``MIGRATOR_STATE`` or the default), written back when the command closes its resources."""
        def load() -> Rates:
            store = self.core.store
            path = getattr(store.backend, "path", None) if isinstance(store, StateStore) else None
            spec = str(path) if path is not None else self.core.options.get("state")
            if isinstance(store, StateStore) and path is None:
                return Rates(now=self.core.clock.timestamp)  # a store in PostgreSQL: no cache on this machine
            return Rates.load(rates_file(spec), now=self.core.clock.timestamp)

        return self.core.resources.obtain(RATES_KEY, load)

    def price(self, estimate: Estimate) -> Estimate:
        """``estimate`` priced by the command's rates (as the step gave it when it counted no work)."""
        return priced(estimate, self.rates())

    def plan(self, loaded: LoadedPlaybook) -> list[StepPlanView]:
        """The dry-run: ``check`` and ``plan`` of every step, in dependency order. Writes nothing."""
        self.core.seed_redactor(loaded)
        outputs: dict[str, Mapping[str, Any]] = {}
        views: list[StepPlanView] = []
        by_id_view: dict[str, StepPlanView] = {}
        env = loaded.environment_values()
        try:
            self.calibrate_engine()
            for step in topological(loaded):
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
                            rough = self.price(rough)
                            view.estimate_seconds, view.basis = rough.seconds, rough.basis
                    else:
                        instance = step.kind(step.id, params)
                        ctx = self.core.context("plan", step.id, env, outputs, MemoryItems(), MemoryMemo(),
                                            dry_run=True)
                        state = instance.check(ctx)
                        result = self.priced_result(instance.plan(ctx))
                        if state.done:
                            outputs[step.id] = dict(state.outputs)
                        fill_view(view, state.done, state.reason, result)
                except MigratorError as exc:
                    # A step whose input an earlier step has yet to make cannot be planned now: that is the
                    # plan working as intended, not a problem to fix (bad input, though, is always an error).
                    pending = [a for a in sorted(loaded.ancestors(step.id)) if by_id_view.get(a) is not None
                               and by_id_view[a].status in ("change", "deferred")]
                    if pending and not isinstance(exc, InputError):
                        view.status = "deferred"
                        view.reason = self.core.redactor.redact(
                            f"planned once {', '.join(pending)} ran (now: {exc.one_line()})")
                    else:
                        view.status = "error"
                        view.reason = self.core.redactor.redact(exc.one_line())
                        view.error_exit = int(exc.exit_code)
                except Exception as exc:  # a dry-run reports every problem rather than stopping at the first
                    view.status = "error"
                    view.reason = self.core.redactor.redact(f"{type(exc).__name__}: {exc}")
                    view.error_exit = int(ExitCode.FAILED)
                views.append(view)
                by_id_view[view.step_id] = view
        finally:
            self.core.resources.close()
        return views

    def estimate(self, run_id: str, loaded: LoadedPlaybook, step: PlannedStep,
                  outputs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
        """Plans one step (no side effects) and returns its estimate, or None when it cannot be known yet."""
        try:
            params = loaded.try_resolve_params(step, outputs, run_id)
            if params is None:
                rough = step.kind.estimate_deferred(step.raw_params)
                rough = self.price(rough) if rough is not None else None
                if rough is None or rough.seconds is None:
                    return None
                return {"seconds": float(rough.seconds), "items": rough.items, "bytes": rough.bytes,
                        "basis": rough.basis, "at": self.core.clock.timestamp(), "noop": False}
            instance: Step[Any] = step.kind(step.id, params)
            ctx = self.core.context(run_id, step.id, loaded.environment_values(), outputs, MemoryItems(), MemoryMemo(),
                                dry_run=True)
            result = self.priced_result(instance.plan(ctx))
        except Exception as exc:  # a forecast is advice: a step that cannot plan now is simply not estimated
            log.info("no estimate for %s: %s", step.id, self.core.describe_error(exc))
            return None
        if result.estimate.seconds is None:
            return None
        return {"seconds": float(result.estimate.seconds), "items": result.estimate.items,
                "bytes": result.estimate.bytes, "basis": result.estimate.basis, "at": self.core.clock.timestamp(),
                "noop": result.noop}

    def priced_result(self, result: PlanResult) -> PlanResult:
        """``result`` with its estimate priced by the command's rates; a step's ``details["run_seconds"]`` (what
        the run spends on a step its check finds done: its estimate's seconds) follows."""
        before = result.estimate.seconds
        result.estimate = self.price(result.estimate)
        if result.details.get("run_seconds") is not None and result.details["run_seconds"] == before:
            result.details["run_seconds"] = result.estimate.seconds
        return result

    def calibrate_engine(self) -> None:
        """Measures what a step costs the engine (state-store transactions) into the command's rates, for the
        plan's timeline (:mod:`migrator.reports.calibrate`)."""
        from migrator.reports.calibrate import engine_cost

        try:
            engine_cost(self.rates())
        except (OSError, sqlite3.Error) as exc:  # advice for the timeline: the plan goes on without it
            log.info("no engine cost measured: %s", exc)

    def record_forecast(self, run_id: str, loaded: LoadedPlaybook, step_ids: list[str]) -> dict[str, float | None]:
        """Estimates the given steps now and keeps each estimate beside the step, for forecast-vs-actual."""
        records = self.core.store.get_steps(run_id)
        outputs = {sid: r.outputs for sid, r in records.items() if r.status == StepStatus.DONE}
        wanted = set(step_ids)
        found: dict[str, float | None] = {}
        for step in topological(loaded):
            if step.id not in wanted:
                continue
            estimate = self.estimate(run_id, loaded, step, outputs)
            rec = records.get(step.id) or StepRecord(run_id, step.id, step.spec.uses)
            if estimate is not None:
                rec.estimate = estimate
                self.core.store.save_step(rec)
            elif rec.estimate is None:
                self.core.store.save_step(rec)
            found[step.id] = estimate["seconds"] if estimate else (rec.estimate or {}).get("seconds")
        return found

    def forecast_after(self, run_id: str, loaded: LoadedPlaybook, step_id: str) -> tuple[float, list[str]]:
        """Seconds the steps after ``step_id`` should take (longest chain of their estimates), re-planned now."""
        after = [sid for sid in descendants(loaded, step_id)
                 if (r := self.core.store.get_step(run_id, sid)) is None or r.status != StepStatus.DONE]
        estimates = self.record_forecast(run_id, loaded, after)
        unknown = [sid for sid in after if estimates.get(sid) is None]
        return critical_path(loaded, {sid: estimates.get(sid) or 0.0 for sid in after}), unknown


def fill_view(view: StepPlanView, done: bool, reason: str, result: PlanResult) -> None:
    view.status = "done" if done or result.noop else "change"
    view.reason = result.reason or reason
    view.changes = list(result.changes)
    view.estimate_seconds = 0.0 if done else result.estimate.seconds
    view.estimate_items = result.estimate.items
    view.estimate_bytes = result.estimate.bytes
    view.basis = result.estimate.basis
    view.details = dict(result.details)


def descendants(loaded: LoadedPlaybook, step_id: str) -> list[str]:
    """The steps that need ``step_id``, directly or not, in playbook order."""
    return [s.id for s in loaded.steps if step_id in loaded.ancestors(s.id)]


def critical_path(loaded: LoadedPlaybook, seconds: Mapping[str, float]) -> float:
    """The longest chain of ``seconds`` through the steps named in it, following ``needs``."""
    ends: dict[str, float] = {}
    for step in topological(loaded):
        if step.id in seconds:
            start = max((ends[d] for d in step.needs if d in ends), default=0.0)
            ends[step.id] = start + seconds[step.id]
    return max(ends.values(), default=0.0)


def topological(loaded: LoadedPlaybook) -> list[PlannedStep]:
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
