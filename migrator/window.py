"""Dayparts and read-only windows: pure logic, no clock of its own (the caller passes ``now``).

A day is cut into dayparts in the tenant's time zone (by default night 00-06, morning 06-12, afternoon 12-18,
evening 18-24). A daypart whose end is before its start (22:00-06:00) crosses midnight and ends the next day.
A *window* is one daypart on one date, written ``DATE/DAYPART`` (``2026-03-14/night``; for a daypart crossing
midnight, the date it starts on); a bare ``DAYPART`` means its current or next occurrence. The gate lets the
read-only part of a migration start only inside the window and only when the forecast of the remaining work,
with a safety margin, ends before the window does; the watchdog later asks :func:`overruns` whether the work
still fits.

Times are aware datetimes. Window bounds are computed in the tenant's zone (``zoneinfo``), so a daypart across
a daylight-saving change is an hour shorter or longer, as it is on the tenant's wall clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from migrator.errors import InputError

MINUTES_PER_DAY = 24 * 60
DEFAULT_DAYPARTS_SPEC: dict[str, str] = {
    "night": "00:00-06:00",
    "morning": "06:00-12:00",
    "afternoon": "12:00-18:00",
    "evening": "18:00-24:00",
}
_CLOCK = re.compile(r"^\s*(\d{1,2})(?::(\d{2}))?\s*$")
_DAYPART_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Daypart:
    """A named part of the day, ``start``..``end`` in minutes after the midnight it starts after.

    ``end`` may pass 1440 for a daypart that crosses midnight (22:00-06:00 is 1320..1800); a daypart is never
    empty and never longer than a day.
    """

    name: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < MINUTES_PER_DAY or not self.start < self.end <= self.start + MINUTES_PER_DAY:
            raise InputError(f"daypart {self.name}: {self.start}..{self.end} minutes is not a part of one day",
                             hint="write dayparts as HH:MM-HH:MM, start before 24:00, end up to 24:00")

    def label(self) -> str:
        return f"{self.name} {_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(minutes: int) -> str:
    if minutes > MINUTES_PER_DAY:  # the next morning, for a daypart across midnight
        minutes -= MINUTES_PER_DAY
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def daypart_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a daypart (it is written in ``--window DATE/NAME``), or None."""
    if not _DAYPART_NAME.match(name):
        return (f"daypart name {name[:40]!r}: use a letter, then letters, digits, '_' or '-' (at most 32), "
                "e.g. night")
    return None


def daypart_from_clock(name: str, start: Any, end: Any, where: str | None = None) -> Daypart:
    """A daypart from two times of day; an ``end`` before ``start`` means the end is on the next day."""
    where = where or f"daypart {name}"
    start_min, end_min = _parse_clock(start, where), _parse_clock(end, where)
    if start_min >= MINUTES_PER_DAY:
        raise InputError(f"{where}: a daypart cannot start at 24:00", hint="write 00:00")
    if end_min == start_min:
        raise InputError(f"{where}: start and end are both {_hhmm(start_min)}, an empty daypart",
                         hint="a daypart ends after it starts (or, crossing midnight, the next day)")
    if end_min < start_min:
        end_min += MINUTES_PER_DAY
    return Daypart(name, start_min, end_min)


def _parse_clock(text: Any, where: str) -> int:
    if isinstance(text, int) and not isinstance(text, bool):  # YAML reads 06 as 6
        text = str(text)
    match = _CLOCK.match(str(text))
    if not match:
        raise InputError(f"{where}: {text!r} is not a time of day", hint="write HH:MM, for example 06:00")
    hours, minutes = int(match.group(1)), int(match.group(2) or 0)
    if minutes >= 60 or hours * 60 + minutes > MINUTES_PER_DAY:
        raise InputError(f"{where}: {text!r} is not a time of day", hint="hours 0-24, minutes 0-59")
    return hours * 60 + minutes


def parse_dayparts(spec: Mapping[str, Any] | None) -> dict[str, Daypart]:
    """Dayparts from an environment file: ``{night: "00:00-06:00"}`` or ``{night: {start: "00:00", end: ...}}``.

    A missing spec (None) gives the defaults; an empty one is refused (it would leave no window to choose).
    """
    if spec is None:
        spec = DEFAULT_DAYPARTS_SPEC
    if not isinstance(spec, Mapping):
        raise InputError(f"dayparts: expected a mapping of names to HH:MM-HH:MM, got {spec!r:.60}")
    if not spec:
        raise InputError("dayparts: none given", hint="name at least one, or leave dayparts out for the standard four")
    dayparts: dict[str, Daypart] = {}
    for name, value in spec.items():
        where = f"dayparts.{name}"
        problem = daypart_name_problem(str(name))
        if problem:
            raise InputError(f"dayparts: {problem}")
        if isinstance(value, Mapping):
            start, end = value.get("start"), value.get("end")
        elif isinstance(value, str) and "-" in value:
            start, end = value.split("-", 1)
        else:
            raise InputError(f"{where}: expected HH:MM-HH:MM or {{start, end}}, got {value!r:.60}")
        dayparts[str(name)] = daypart_from_clock(str(name), start, end, where)
    return dayparts


def time_zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"unknown time zone {name!r}", hint="use an IANA name such as Europe/Amsterdam") from None


@dataclass(frozen=True)
class Window:
    """One daypart on one date, with its bounds as aware datetimes in the tenant's zone."""

    day: date
    daypart: Daypart
    start: datetime
    end: datetime

    @property
    def name(self) -> str:
        return f"{self.day.isoformat()}/{self.daypart.name}"

    # Arithmetic and comparisons go through UTC: between datetimes of one zone Python ignores the offsets,
    # which would make a night across a DST change six hours long.
    @property
    def start_utc(self) -> datetime:
        return self.start.astimezone(UTC)

    @property
    def end_utc(self) -> datetime:
        return self.end.astimezone(UTC)

    @property
    def seconds(self) -> float:
        return (self.end_utc - self.start_utc).total_seconds()

    def contains(self, moment: datetime) -> bool:
        return self.start_utc <= moment.astimezone(UTC) < self.end_utc


def _at(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    extra_days, minutes = divmod(minutes, MINUTES_PER_DAY)
    local = datetime.combine(day + timedelta(days=extra_days), time(minutes // 60, minutes % 60), tzinfo=tz)
    # Round-trip through UTC so a wall time in a DST gap lands on the real instant after it.
    return local.astimezone(UTC).astimezone(tz)


def window_on(day: date, daypart: Daypart, tz: ZoneInfo) -> Window:
    return Window(day, daypart, _at(day, daypart.start, tz), _at(day, daypart.end, tz))


def resolve_window(text: str, dayparts: Mapping[str, Daypart], tz: ZoneInfo, now: datetime) -> Window:
    """``DATE/DAYPART`` → that window; ``DAYPART`` → the one going on now, or else the next one."""
    text = text.strip()
    day_text, _, part_name = text.rpartition("/")
    if part_name not in dayparts:
        raise InputError(f"window {text!r}: no daypart {part_name!r}",
                         hint=f"choose one of {', '.join(dayparts)} (as DATE/DAYPART, e.g. 2026-03-14/night)")
    daypart = dayparts[part_name]
    if day_text:
        try:
            day = date.fromisoformat(day_text)
            return window_on(day, daypart, tz)
        except (ValueError, OverflowError):  # 2026-02-30; 9999-12-31 for a night that ends the next day
            raise InputError(f"window {text!r}: {day_text!r} is not a date", hint="write YYYY-MM-DD") from None
    today = now.astimezone(tz).date()
    for offset in (-1, 0, 1, 2):  # yesterday's covers a daypart running past midnight
        window = window_on(today + timedelta(days=offset), daypart, tz)
        if now.astimezone(UTC) < window.end_utc:
            return window
    raise AssertionError("unreachable: a daypart recurs every day")


def daypart_at(moment: datetime, dayparts: Mapping[str, Daypart], tz: ZoneInfo) -> Window | None:
    """The window (daypart occurrence) holding ``moment``, if any daypart covers it."""
    local_day = moment.astimezone(tz).date()
    for offset in (0, -1):
        for daypart in dayparts.values():
            window = window_on(local_day + timedelta(days=offset), daypart, tz)
            if window.contains(moment):
                return window
    return None


def needed_seconds(forecast_seconds: float, margin_ratio: float = 0.0, margin_seconds: float = 0.0) -> float:
    """The forecast grown by the safety margin: a ratio of itself plus a fixed number of seconds."""
    return forecast_seconds * (1.0 + margin_ratio) + margin_seconds


@dataclass(frozen=True)
class GateDecision:
    """What the gate does now: ``go``, ``wait`` (``wait_seconds`` until the window opens) or ``refuse``."""

    action: Literal["go", "wait", "refuse"]
    reason: str
    wait_seconds: float = 0.0


def _duration(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def decide(now: datetime, window: Window, needed: float) -> GateDecision:
    """Whether work needing ``needed`` seconds (margin included) may start at ``now`` inside ``window``."""
    now = now.astimezone(UTC)
    if needed > window.seconds:
        return GateDecision("refuse", f"the work needs {_duration(needed)} with its margin, longer than the whole "
                                      f"{window.daypart.label()} window ({_duration(window.seconds)})")
    if now >= window.end_utc:
        return GateDecision("refuse", f"window {window.name} ended at {window.end.isoformat()}")
    if now < window.start_utc:
        wait = (window.start_utc - now).total_seconds()
        return GateDecision("wait", f"window {window.name} opens at {window.start.isoformat()}, "
                                    f"in {_duration(wait)}", wait)
    left = (window.end_utc - now).total_seconds()
    if needed > left:
        return GateDecision("refuse", f"only {_duration(left)} left in window {window.name}, the work needs "
                                      f"{_duration(needed)} with its margin")
    return GateDecision("go", f"inside window {window.name}: {_duration(needed)} needed, {_duration(left)} left")


def overruns(now: datetime, window_end: datetime, remaining_seconds: float, margin_seconds: float = 0.0) -> bool:
    """For a watchdog: will the remaining work (plus a margin for rolling back) end after the window does?"""
    return now.astimezone(UTC) + timedelta(seconds=remaining_seconds + margin_seconds) > window_end.astimezone(UTC)
