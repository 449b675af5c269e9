"""The read-only window gate: the migration goes read-only only inside the chosen daypart, and only when the
rest of the work fits in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from migrator.errors import InputError, PreconditionFailed, ValidationError
from migrator.estimator import Work, estimate, rates
from migrator.step import Params, PlanResult, Step, StepContext
from migrator.window import (
    GateDecision,
    Window,
    daypart_name_problem,
    decide,
    needed_seconds,
    parse_dayparts,
    resolve_window,
    time_zone,
)

if TYPE_CHECKING:
    from migrator.playbook import LoadedPlaybook

MEMO_WINDOW = "window"


class WindowGateParams(Params):
    #: ``DATE/DAYPART`` or ``DAYPART``; the command's ``--window`` option wins over it.
    window: str | None = None
    #: The tenant's IANA time zone; by default ``tenant.timezone`` of the environment, else UTC.
    time_zone: str | None = None
    #: Dayparts as in the environment file; by default the environment's ``dayparts``, else the standard four.
    dayparts: dict[str, Any] | None = None
    #: Seconds the remaining steps are forecast to take; by default the command's ``forecast_seconds`` option
    #: (the engine's sum of the remaining steps' estimates), else ``settings.forecast_seconds``.
    forecast_seconds: float | None = Field(None, ge=0)
    #: Safety margin: the forecast grows by this ratio of itself, plus ``margin_seconds``.
    margin_ratio: float = Field(0.25, ge=0)
    margin_seconds: float = Field(300.0, ge=0)
    #: How long the gate may wait for the window to open before it refuses instead (0: never wait).
    max_wait_seconds: float = Field(0.0, ge=0)
    #: While waiting, how often to wake up and look for a cancellation.
    poll_seconds: float = Field(30.0, gt=0)

    # What can be told without the environment is checked here, when the playbook loads; whether the window's
    # daypart exists is checked against the environment by check_window_choice.
    @field_validator("window")
    @classmethod
    def _window_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            problem = window_syntax_problem(value)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            _input_to_value_error(time_zone, value)
        return value

    @field_validator("dayparts")
    @classmethod
    def _dayparts(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            _input_to_value_error(parse_dayparts, value)
        return value


def _input_to_value_error(check: Any, value: Any) -> None:
    try:
        check(value)
    except InputError as exc:  # pydantic reports a ValueError as the field's error, with its line
        raise ValueError(exc.one_line()) from None


def window_syntax_problem(text: str) -> str | None:
    """What is wrong with a window written as ``DATE/DAYPART`` or ``DAYPART``, before any daypart is known."""
    day_text, slash, name = text.strip().rpartition("/")
    if slash:
        try:
            date.fromisoformat(day_text)
        except ValueError:
            return f"window {text[:60]!r}: {day_text[:40]!r} is not a date (write YYYY-MM-DD/DAYPART)"
    return daypart_name_problem(name)


class WindowGate(Step[WindowGateParams]):
    """Lets the run pass only inside the read-only window, when the forecast work fits before it ends.

    Changes nothing in the world; it waits (at most ``max_wait_seconds``, on the run's clock) for the window to
    open, or refuses with the reason (window over, too little time left, work longer than the whole daypart).
    Is done when it has passed: it keeps no state but the window it chose (so a resume keeps the same window).
    Nothing to undo. Its outputs give the window's start, end and the watchdog's deadline as ISO 8601 strings.
    """

    wants_forecast = True
    kind = "window.gate"
    Params = WindowGateParams
    summary = "wait for the read-only daypart window and check that the remaining work fits in it"

    # -- inputs ----------------------------------------------------------------------------------------------

    def _environment(self, ctx: StepContext, key: str) -> Mapping[str, Any]:
        value = ctx.environment.get(key) if ctx.environment else None
        return value if isinstance(value, Mapping) else {}

    def _window(self, ctx: StepContext) -> Window:
        p = self.params
        tenant = self._environment(ctx, "tenant")
        tz = time_zone(p.time_zone or tenant.get("timezone") or tenant.get("time_zone"))
        dayparts = parse_dayparts(p.dayparts if p.dayparts is not None else
                                  self._environment(ctx, "dayparts") or None)
        chosen = ctx.memo.get(MEMO_WINDOW) or ctx.options.get("window") or p.window
        if not chosen:
            raise PreconditionFailed(f"{self.step_id}: no read-only window chosen", step_id=self.step_id,
                                     hint="pass --window DATE/DAYPART (e.g. 2026-03-14/night) or set `window`")
        return resolve_window(str(chosen), dayparts, tz, ctx.clock.now())

    def _forecast(self, ctx: StepContext) -> tuple[float, str]:
        if self.params.forecast_seconds is not None:
            return self.params.forecast_seconds, "the step's forecast_seconds"
        for source, value in (("the command's forecast", ctx.options.get("forecast_seconds")),
                              ("settings.forecast_seconds", self._environment(ctx, "settings").get(
                                  "forecast_seconds"))):
            if value is not None:
                return float(value), source
        return 0.0, "no forecast given: only the margin is counted"

    def _needed(self, ctx: StepContext) -> tuple[float, float, str]:
        forecast, basis = self._forecast(ctx)
        return forecast, needed_seconds(forecast, self.params.margin_ratio, self.params.margin_seconds), basis

    # -- contract --------------------------------------------------------------------------------------------

    def plan(self, ctx: StepContext) -> PlanResult:
        window = self._window(ctx)
        forecast, needed, basis = self._needed(ctx)
        now = ctx.clock.now()
        decision = decide(now, window, needed)
        wait = 0.0
        if decision.action == "wait":
            wait = decision.wait_seconds
            decision = decide(window.start, window, needed)  # as it will look when the window opens
            if decision.action == "go" and wait > self.params.max_wait_seconds:
                decision = GateDecision("refuse", f"window {window.name} opens in {wait:.0f} s, later than "
                                                  f"max_wait_seconds ({self.params.max_wait_seconds:.0f} s) allows")
        fits = decision.action == "go"
        details = {**_window_outputs(window, self.params.margin_seconds), "fits": fits,
                   "forecast_seconds": forecast, "needed_seconds": needed, "forecast_basis": basis,
                   "wait_seconds": wait, "reason": decision.reason}
        change = (f"wait {wait:.0f} s for window {window.name}, then pass" if wait else
                  f"pass into window {window.name}") if fits else f"refuse: {decision.reason}"
        return PlanResult(changes=[change], reason=decision.reason, details=details,
                          estimate=estimate(Work(fixed={"time until the window opens": wait}), rates(ctx)))

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        window = self._window(ctx)
        ctx.memo.set(MEMO_WINDOW, window.name)
        forecast, needed, basis = self._needed(ctx)
        waited = 0.0
        while True:
            now = ctx.clock.now()
            decision = decide(now, window, needed)
            if decision.action == "go":
                break
            if decision.action == "refuse":
                raise PreconditionFailed(f"{self.step_id}: {decision.reason}", step_id=self.step_id,
                                         hint="choose another window with --window DATE/DAYPART")
            if waited + decision.wait_seconds > self.params.max_wait_seconds:
                raise PreconditionFailed(
                    f"{self.step_id}: {decision.reason}; waiting so long is more than max_wait_seconds "
                    f"({self.params.max_wait_seconds:.0f} s) allows", step_id=self.step_id,
                    hint="start the run closer to the window, or raise max_wait_seconds")
            ctx.event("window.wait", decision.reason, window=window.name, seconds=decision.wait_seconds)
            ctx.log.info("%s: %s", self.step_id, decision.reason)
            remaining = decision.wait_seconds
            while remaining > 0:
                ctx.raise_if_cancelled()
                chunk = min(remaining, self.params.poll_seconds)
                ctx.clock.sleep(chunk)
                remaining -= chunk
                waited += chunk
            ctx.raise_if_cancelled()
        ctx.event("window.open", decision.reason, window=window.name, forecast_seconds=forecast,
                  needed_seconds=needed)
        return {**_window_outputs(window, self.params.margin_seconds), "passed_at": now.isoformat(),
                "waited_seconds": waited, "forecast_seconds": forecast, "needed_seconds": needed,
                "forecast_basis": basis, "reason": decision.reason}


def _window_outputs(window: Window, margin_seconds: float) -> dict[str, Any]:
    return {
        "window": window.name,
        "daypart": window.daypart.name,
        "time_zone": str(window.start.tzinfo),
        "window_start": window.start.isoformat(),
        "window_end": window.end.isoformat(),
        "window_seconds": window.seconds,
        # The watchdog must have rolled back by the window's end: it aborts once work would pass this point.
        "deadline": (window.end_utc - timedelta(seconds=margin_seconds)).astimezone(window.end.tzinfo).isoformat(),
    }


def check_window_choice(loaded: LoadedPlaybook, window_option: str | None) -> None:
    """Refuses, before anything runs, a window that no ``window.gate`` of the playbook can open.

    ``--window`` (``window_option``) must name a daypart of every gate, on a real date, and a playbook without a
    gate takes no ``--window`` (it would be ignored, and the engineer think the run waits for it). A gate's own
    ``window`` param is checked the same way against its dayparts (the environment's unless it has its own).
    Gates whose dayparts or zone come from a step's outputs are checked when they run.
    """
    gates = [step for step in loaded.steps if step.kind is WindowGate]
    if window_option is not None and not gates:
        raise InputError(f"--window {window_option[:60]!r}: the playbook has no window.gate step, so it has no "
                         "read-only window to choose", hint="leave --window out")
    env = loaded.environment_values()
    tenant = env.get("tenant") or {}
    now = datetime.now(UTC)
    for step in gates:
        raw = step.raw_params
        if step.late_fields & {"window", "dayparts", "time_zone"}:
            continue
        chosen, param = (window_option, False) if window_option is not None else (raw.get("window"), True)
        if chosen is None:
            continue
        where = ("steps", step.index, "with", "window")
        try:
            dayparts = parse_dayparts(raw.get("dayparts") if raw.get("dayparts") is not None else
                                      env.get("dayparts") or None)
            tz = time_zone(raw.get("time_zone") or tenant.get("timezone"))
            resolve_window(str(chosen), dayparts, tz, now)
        except InputError as exc:
            source = "its dayparts" if raw.get("dayparts") is not None else (
                f"the dayparts of {loaded.environment_doc.file}" if loaded.environment_doc else "the standard dayparts")
            if param:
                doc = loaded.playbook_doc
                raise ValidationError(f"{exc.one_line()} ({source})", file=doc.file, line=doc.line_of(where),
                                      field=f"steps[{step.index}].with.window") from None
            raise InputError(f"--window: {exc.message} (step {step.id}: {source})", hint=exc.hint) from None
