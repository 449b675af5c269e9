"""Waves and the schedule they imply: pure functions, no clock of their own (``fleet plan`` and ``fleet start``).

:func:`assign_waves` puts the tenants, in file order, into the canary and the waves. :func:`simulate` forecasts a
campaign the way the workflows run it: a wave starts when the one before it has finished; a tenant starts (its
presync, while live) when the global and per-site caps allow; it goes read-only at the first moment inside its
own window (its daypart, its time zone) when its region's read-only cap allows and its presync is done; its
read-only part lasts what its ``migrator plan`` forecast says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from migrator.window import Daypart, Window, resolve_window, time_zone, window_on


def wave_sizes(count: int, canary: int, sizes: Sequence[int | str]) -> list[int]:
    """How many tenants each wave holds (the canary first, when there is one); the rest form a last wave."""
    result: list[int] = []
    left = count
    if canary and left:
        result.append(min(canary, left))
        left -= result[-1]
    for size in sizes:
        if left <= 0:
            break
        n = size if isinstance(size, int) else max(1, math.ceil(count * float(size.rstrip("%")) / 100.0))
        n = min(n, left)
        result.append(n)
        left -= n
    if left > 0:
        result.append(left)
    return result


def assign_waves(names: Sequence[str], canary: int, sizes: Sequence[int | str]) -> dict[str, int]:
    """Tenant name → wave number (0 is the canary when there is one), in the campaign file's order."""
    waves: dict[str, int] = {}
    index = 0
    for wave, n in enumerate(wave_sizes(len(names), canary, sizes)):
        for name in names[index:index + n]:
            waves[name] = wave
        index += n
    return waves


@dataclass(frozen=True)
class TenantForecast:
    """What one tenant is expected to take: the part before read-only, and the read-only part."""

    name: str
    wave: int
    region: str
    site: str
    window: str
    time_zone: str
    dayparts: Mapping[str, Daypart]
    presync_seconds: float
    read_only_seconds: float


@dataclass
class ScheduledTenant:
    name: str
    wave: int
    region: str
    site: str
    start: datetime
    read_only_start: datetime
    read_only_end: datetime
    window: Window
    fits: bool
    note: str = ""

    @property
    def read_only_seconds(self) -> float:
        return (self.read_only_end - self.read_only_start).total_seconds()


@dataclass
class Schedule:
    start: datetime
    tenants: list[ScheduledTenant] = field(default_factory=list)

    @property
    def end(self) -> datetime:
        return max((t.read_only_end for t in self.tenants), default=self.start)


def _next_window(t: TenantForecast, at: datetime, seconds: float) -> tuple[datetime, Window, bool]:
    """The earliest moment from ``at`` inside the tenant's window (this occurrence or a later one) with
    ``seconds`` left in it; and whether one was found within a week."""
    tz = time_zone(t.time_zone)
    window = resolve_window(t.window, t.dayparts, tz, at)
    if "/" in t.window:  # a fixed date: that window or none
        begin = max(at, window.start_utc)
        return begin, window, begin + timedelta(seconds=seconds) <= window.end_utc
    for _ in range(8):
        begin = max(at, window.start_utc)
        if begin + timedelta(seconds=seconds) <= window.end_utc:
            return begin, window, True
        window = window_on(window.day + timedelta(days=1), window.daypart, tz)
    return max(at, window.start_utc), window, False


def simulate(tenants: Sequence[TenantForecast], start: datetime, *, cap_global: int, cap_region: int | None,
             cap_site: int | None) -> Schedule:
    """The campaign's schedule under its caps and windows (an event simulation of what the workflows do)."""
    schedule = Schedule(start)
    ready = start
    for wave in sorted({t.wave for t in tenants}):
        members = [t for t in tenants if t.wave == wave]
        # (tenant, start, read_only_start, read_only_end) of tenants started in this wave
        placed: list[ScheduledTenant] = []
        for t in members:
            moment = ready
            while True:
                in_flight = [p for p in placed if p.start <= moment < p.read_only_end]
                same_site = [p for p in in_flight if p.site == t.site]
                if len(in_flight) < cap_global and (cap_site is None or len(same_site) < cap_site):
                    break
                moment = min(p.read_only_end for p in in_flight)
            presynced = moment + timedelta(seconds=t.presync_seconds)
            ro_start, window, fits = _next_window(t, presynced, t.read_only_seconds)
            while cap_region is not None:
                busy = [p for p in placed if p.region == t.region and p.read_only_start <= ro_start < p.read_only_end]
                if len(busy) < cap_region:
                    break
                ro_start, window, fits = _next_window(t, min(p.read_only_end for p in busy), t.read_only_seconds)
            entry = ScheduledTenant(t.name, wave, t.region, t.site, moment, ro_start,
                                    ro_start + timedelta(seconds=t.read_only_seconds), window, fits,
                                    "" if fits else f"no {t.window} window within a week has room for it")
            placed.append(entry)
        schedule.tenants.extend(placed)
        ready = max((p.read_only_end for p in placed), default=ready)
    return schedule
