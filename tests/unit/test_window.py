"""Dayparts, windows and the gate's decision (pure logic), and the ``window.gate`` step on a fake clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from migrator.clock import FakeClock
from migrator.errors import Cancelled, InputError, PreconditionFailed
from migrator.steps.window import WindowGate, WindowGateParams
from migrator.testing import MemoryContext, plan_step, run_step
from migrator.window import (
    Daypart,
    daypart_at,
    decide,
    needed_seconds,
    overruns,
    parse_dayparts,
    resolve_window,
    window_on,
)

AMS = ZoneInfo("Europe/Amsterdam")
DEFAULT = parse_dayparts(None)
HOUR = 3600.0


def _ams(*args: int) -> datetime:
    return datetime(*args, tzinfo=AMS)  # type: ignore[misc]


# -- dayparts ---------------------------------------------------------------------------------------------------


def test_default_dayparts_cover_the_day_in_four_parts() -> None:
    assert [(d.name, d.start, d.end) for d in DEFAULT.values()] == [
        ("night", 0, 360), ("morning", 360, 720), ("afternoon", 720, 1080), ("evening", 1080, 1440)]


@pytest.mark.parametrize(("spec", "expected"), [
    ({"night": "22:00-24:00"}, Daypart("night", 1320, 1440)),
    ({"night": "1-5"}, Daypart("night", 60, 300)),
    ({"night": {"start": "00:30", "end": "06:15"}}, Daypart("night", 30, 375)),
    ({"night": {"start": 0, "end": 6}}, Daypart("night", 0, 360)),
])
def test_dayparts_are_read_from_the_environment(spec: dict[str, Any], expected: Daypart) -> None:
    assert parse_dayparts(spec)["night"] == expected


@pytest.mark.parametrize("spec", [
    {"night": "06:00-06:00"},  # empty
    {"night": "24:00-06:00"},  # starts at the end of the day
    {"night": "00:00-25:00"},
    {"night": "00:61-06:00"},
    {"night": "midnight"},
    {"night": 6},
    {},
    {"a/b": "00:00-06:00"},  # a name --window DATE/NAME cannot hold
])
def test_malformed_dayparts_are_input_errors(spec: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        parse_dayparts(spec)


def test_a_daypart_whose_end_is_before_its_start_crosses_midnight() -> None:
    late = parse_dayparts({"late": "22:00-06:00"})
    window = resolve_window("2026-03-14/late", late, AMS, _ams(2026, 3, 1))

    assert (window.start, window.end, window.seconds) == (_ams(2026, 3, 14, 22), _ams(2026, 3, 15, 6), 8 * HOUR)
    assert late["late"].label() == "late 22:00-06:00"
    assert daypart_at(_ams(2026, 3, 15, 2), late, AMS) == window
    assert resolve_window("late", late, AMS, _ams(2026, 3, 15, 3)) == window  # the one going on
    assert parse_dayparts({"evening": "18:00-00:00"})["evening"] == Daypart("evening", 1080, 1440)


# -- windows ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("day", "part", "start", "end", "hours"), [
    (date(2026, 3, 14), "night", _ams(2026, 3, 14, 0), _ams(2026, 3, 14, 6), 6),
    (date(2026, 3, 14), "evening", _ams(2026, 3, 14, 18), _ams(2026, 3, 15, 0), 6),
    (date(2026, 3, 29), "night", _ams(2026, 3, 29, 0), _ams(2026, 3, 29, 6), 5),  # clocks go forward
    (date(2026, 10, 25), "night", _ams(2026, 10, 25, 0), _ams(2026, 10, 25, 6), 7),  # clocks go back
])
def test_window_bounds_follow_the_tenant_wall_clock(day: date, part: str, start: datetime, end: datetime,
                                                     hours: int) -> None:
    window = window_on(day, DEFAULT[part], AMS)
    assert (window.start, window.end) == (start, end)
    assert window.seconds == hours * HOUR


@pytest.mark.parametrize(("text", "now", "expected"), [
    ("2026-03-14/night", _ams(2026, 1, 1, 12), "2026-03-14/night"),
    ("night", _ams(2026, 3, 14, 3), "2026-03-14/night"),  # going on now
    ("night", _ams(2026, 3, 14, 7), "2026-03-15/night"),  # over today: the next one
    ("evening", _ams(2026, 3, 14, 23, 59), "2026-03-14/evening"),
    ("morning", datetime(2026, 3, 14, 4, 30, tzinfo=UTC), "2026-03-14/morning"),  # 05:30 in Amsterdam
])
def test_window_text_resolves_to_one_daypart_occurrence(text: str, now: datetime, expected: str) -> None:
    assert resolve_window(text, DEFAULT, AMS, now).name == expected


@pytest.mark.parametrize("text", ["2026-03-14/lunch", "14-03-2026/night", "2026-02-30/night", ""])
def test_unknown_daypart_or_bad_date_is_an_input_error(text: str) -> None:
    with pytest.raises(InputError):
        resolve_window(text, DEFAULT, AMS, _ams(2026, 1, 1))


def test_daypart_at_finds_the_occurrence_holding_a_moment() -> None:
    window = daypart_at(_ams(2026, 3, 14, 13, 5), DEFAULT, AMS)
    assert window is not None and window.name == "2026-03-14/afternoon"
    assert daypart_at(_ams(2026, 3, 14, 13), {"night": Daypart("night", 0, 360)}, AMS) is None


# -- the decision -----------------------------------------------------------------------------------------------

NIGHT = window_on(date(2026, 3, 14), DEFAULT["night"], AMS)  # 00:00-06:00


@pytest.mark.parametrize(("now", "needed", "action", "says"), [
    (_ams(2026, 3, 14, 0), 2 * HOUR, "go", "inside window"),
    (_ams(2026, 3, 14, 3, 59), 2 * HOUR, "go", "inside window"),  # ends 05:59
    (_ams(2026, 3, 14, 4, 1), 2 * HOUR, "refuse", "only 1h59m left"),
    (_ams(2026, 3, 13, 23), 2 * HOUR, "wait", "opens at 2026-03-14T00:00:00+01:00"),
    (_ams(2026, 3, 14, 6), 1, "refuse", "ended"),
    (_ams(2026, 3, 13, 23), 7 * HOUR, "refuse", "longer than the whole night"),
    (_ams(2026, 3, 14, 0), 6 * HOUR, "go", "inside window"),  # exactly fits
])
def test_gate_decides_go_wait_or_refuse(now: datetime, needed: float, action: str, says: str) -> None:
    decision = decide(now, NIGHT, needed)
    assert decision.action == action
    assert says in decision.reason


def test_wait_is_the_time_until_the_window_opens() -> None:
    assert decide(_ams(2026, 3, 13, 22, 30), NIGHT, HOUR).wait_seconds == 1.5 * HOUR


def test_needed_seconds_grows_the_forecast_by_both_margins() -> None:
    assert needed_seconds(1000, 0.25, 60) == 1310


@pytest.mark.parametrize(("now", "remaining", "margin", "expected"), [
    (_ams(2026, 3, 14, 5), 1800, 0, False),
    (_ams(2026, 3, 14, 5), 1800, 1801, True),
    (_ams(2026, 3, 14, 5, 31), 1800, 0, True),
])
def test_watchdog_overrun_counts_the_rollback_margin(now: datetime, remaining: float, margin: float,
                                                      expected: bool) -> None:
    assert overruns(now, NIGHT.end, remaining, margin) is expected


# -- the step on a fake clock -------------------------------------------------------------------------------------

ENVIRONMENT = {"tenant": {"name": "contoso", "timezone": "Europe/Amsterdam"}, "dayparts": None}


def _gate(ctx_options: dict[str, Any] | None = None, *, start: datetime, **params: Any) -> tuple[WindowGate,
                                                                                               MemoryContext]:
    clock = FakeClock(start.astimezone(UTC))
    ctx = MemoryContext(step_id="gate", environment=ENVIRONMENT, clock=clock, options=ctx_options or {})
    return WindowGate("gate", WindowGateParams(**params)), ctx


def test_gate_waits_on_the_clock_for_the_window_then_passes_with_its_bounds() -> None:
    step, ctx = _gate({"window": "2026-03-14/night"}, start=_ams(2026, 3, 13, 23, 30), forecast_seconds=HOUR,
                      max_wait_seconds=HOUR)
    _, outputs = run_step(step, ctx)
    assert ctx.clock.now() == _ams(2026, 3, 14, 0)
    assert outputs["window_start"] == "2026-03-14T00:00:00+01:00"
    assert outputs["window_end"] == "2026-03-14T06:00:00+01:00"
    assert outputs["deadline"] == "2026-03-14T05:55:00+01:00"  # default margin: 300 s
    assert outputs["waited_seconds"] == 1800 and outputs["needed_seconds"] == HOUR * 1.25 + 300
    assert [e[0] for e in ctx.events] == ["window.wait", "window.open"]


def test_gate_refuses_rather_than_wait_longer_than_allowed() -> None:
    step, ctx = _gate({"window": "2026-03-14/night"}, start=_ams(2026, 3, 13, 20), max_wait_seconds=HOUR)
    with pytest.raises(PreconditionFailed, match=r"opens at .* more than max_wait_seconds"):
        run_step(step, ctx)
    assert ctx.clock.now() == _ams(2026, 3, 13, 20)  # refused at once, did not sleep


def test_gate_refuses_when_the_forecast_no_longer_fits_in_what_is_left() -> None:
    step, ctx = _gate(start=_ams(2026, 3, 14, 4), window="2026-03-14/night", forecast_seconds=2 * HOUR)
    with pytest.raises(PreconditionFailed, match="only 2h00m left in window 2026-03-14/night"):
        run_step(step, ctx)


def test_command_option_window_wins_over_the_param() -> None:
    step, ctx = _gate({"window": "2026-03-14/evening"}, start=_ams(2026, 3, 14, 19), window="2026-03-14/night",
                      forecast_seconds=60)
    _, outputs = run_step(step, ctx)
    assert outputs["window"] == "2026-03-14/evening"


def test_forecast_comes_from_the_command_when_the_step_has_none() -> None:
    step, ctx = _gate({"window": "night", "forecast_seconds": 4 * HOUR}, start=_ams(2026, 3, 14, 1, 30))
    with pytest.raises(PreconditionFailed, match="only 4h30m left"):
        run_step(step, ctx)


def test_gate_without_a_window_says_how_to_choose_one() -> None:
    step, ctx = _gate(start=_ams(2026, 3, 14, 0))
    with pytest.raises(PreconditionFailed) as caught:
        run_step(step, ctx)
    assert "--window DATE/DAYPART" in caught.value.one_line()


def test_resumed_gate_keeps_the_window_it_chose() -> None:
    step, ctx = _gate(start=_ams(2026, 3, 14, 5), window="night", forecast_seconds=60, margin_seconds=0)
    ctx.memo.set("window", "2026-03-14/night")
    ctx.clock.advance(2 * HOUR)  # resumed after the night: "night" would now mean tomorrow's
    with pytest.raises(PreconditionFailed, match="ended"):
        run_step(step, ctx)


def test_cancelled_while_waiting_stops_the_gate() -> None:
    step, ctx = _gate({"window": "2026-03-14/night"}, start=_ams(2026, 3, 13, 23), max_wait_seconds=2 * HOUR)
    ctx.cancel_event.set()
    with pytest.raises(Cancelled):
        run_step(step, ctx)


def test_gate_uses_the_dayparts_and_time_zone_of_the_environment() -> None:
    step, ctx = _gate({"window": "2026-07-01/maintenance"}, start=datetime(2026, 7, 2, 3, 30, tzinfo=UTC),
                      forecast_seconds=60)  # 23:30 on 1 July in New York
    ctx.environment = {"tenant": {"timezone": "America/New_York"},
                       "dayparts": {"maintenance": {"start": "22:00", "end": "24:00"}}}
    _, outputs = run_step(step, ctx)
    assert (outputs["window_start"], outputs["window_end"]) == ("2026-07-01T22:00:00-04:00",
                                                                "2026-07-02T00:00:00-04:00")
    assert outputs["time_zone"] == "America/New_York"


@pytest.mark.parametrize(("start", "params", "fits", "change"), [
    (_ams(2026, 3, 13, 23), {"max_wait_seconds": HOUR}, True, "wait 3600 s for window 2026-03-14/night"),
    (_ams(2026, 3, 14, 1), {}, True, "pass into window 2026-03-14/night"),
    (_ams(2026, 3, 13, 20), {"max_wait_seconds": HOUR}, False, "refuse: window 2026-03-14/night opens in"),
    (_ams(2026, 3, 14, 1), {"forecast_seconds": 6 * HOUR}, False, "refuse: the work needs"),
])
def test_plan_reports_whether_the_window_fits_and_changes_nothing(start: datetime, params: dict[str, Any],
                                                                  fits: bool, change: str) -> None:
    step, ctx = _gate({"window": "2026-03-14/night"}, start=start, **{"forecast_seconds": HOUR, **params})
    result = plan_step(step, ctx)
    assert result.details["fits"] is fits
    assert result.changes[0].startswith(change)
    assert result.details["window_end"] == "2026-03-14T06:00:00+01:00"
    assert ctx.clock.now() == start and ctx.events == [] and ctx.memo.as_dict() == {}


def test_window_gate_is_registered_by_its_kind() -> None:
    from migrator.registry import load_registry

    assert load_registry(third_party=False).get("window.gate") is WindowGate


def test_gate_passes_with_the_next_occurrence_when_given_only_a_daypart() -> None:
    step, ctx = _gate(start=_ams(2026, 3, 14, 7), window="night", forecast_seconds=60,
                      max_wait_seconds=24 * HOUR)
    _, outputs = run_step(step, ctx)
    assert outputs["window"] == "2026-03-15/night"
    assert ctx.clock.now() - _ams(2026, 3, 14, 7) == timedelta(hours=17)
