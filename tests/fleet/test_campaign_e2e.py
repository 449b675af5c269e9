"""A campaign of six small tenants on a real Temporal dev server, two worker processes and a shared PostgreSQL
state store, through ``migrator fleet``; one worker is SIGKILLed while one of its tenants is read-only."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fixtures.demo import DemoSize
from fixtures.fleet_demo import FleetStack, daypart_from, minute_in, zone_at
from fixtures.services.temporal import TemporalServer
from migrator.window import Daypart, daypart_at, parse_dayparts, time_zone
from tests.fleet.support import (
    RUN_END,
    events,
    fleet,
    intervals,
    lock_pid,
    most_at_once,
    output,
    status,
    status_now,
    wait_for,
    workers,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

#: Seconds from the campaign's start to the canary's daypart: room for its presync to begin while it is live.
OPENS_IN = 15
#: Big enough that its read-only part lasts a few seconds: the SIGKILL lands inside it.
KILLABLE = DemoSize(rows=8_000, blobs=20, blob_bytes=400_000)


def _window_of(dayparts: dict[str, dict[str, str]], zone: str, ts: float) -> tuple[str, float, float] | None:
    parts: dict[str, Daypart] = parse_dayparts(dayparts)
    window = daypart_at(datetime.fromtimestamp(ts, UTC), parts, time_zone(zone))
    return None if window is None else (window.daypart.name, window.start_utc.timestamp(), window.end_utc.timestamp())


def test_six_tenants_two_workers_canary_then_waves_inside_their_windows_under_the_caps_surviving_a_sigkill(
        fleet_stack: FleetStack, temporal_server: TemporalServer, tmp_path: Path) -> None:
    stack = fleet_stack
    zones = {"west": zone_at(13), "north": zone_at(9)}
    open_now = {zone: {"fleet": daypart_from(zone, -60, 3 * 3600)} for zone in zones.values()}
    layout = [("m1", "west", "westeurope", "site1"), ("m2", "north", "northeurope", "site2"),
              ("m3", "west", "westeurope", "site1"), ("m4", "west", "westeurope", "site2"),
              ("m5", "north", "northeurope", "site1"), ("m6", "west", "westeurope", "site2")]
    tenants = {name: stack.add_tenant(name, time_zone=zones[zone_key], dayparts=open_now[zones[zone_key]],
                                      size=KILLABLE if name == "m4" else DemoSize(300, 12, 120_000))
               for name, zone_key, _, _ in layout}
    entries = [(tenants[n], region, site) for n, _, region, site in layout]
    settings = {"waves": {"canary": 1, "sizes": [2]}, "caps": {"global": 3, "per_region": 1, "per_site": 2},
                "failure": {"max_failed": 0},
                "retry": {"heartbeat_timeout": "5s", "initial": "1s", "max": "2s", "attempts": 10}}
    campaign = stack.write_campaign(tmp_path / "main.yaml", entries, **settings)
    planned = fleet(stack, temporal_server, "plan", str(campaign), "--json", "--out", str(tmp_path / "plan"))
    assert planned.returncode == 0, output(planned)
    plan = json.loads(planned.stdout)
    assert [(t["tenant"], t["wave"]) for t in plan["tenants"]] == [(n, w) for (n, *_), w in
                                                                   zip(layout, [0, 1, 1, 2, 2, 2], strict=True)]
    assert all(t["forecast"]["basis"] == "migrator plan" and t["forecast"]["read_only_seconds"] > 0
               for t in plan["tenants"]), plan
    assert (tmp_path / "plan" / "fleet-plan.html").exists()
    assert {p.name for p in (tmp_path / "plan" / "tenants").iterdir()} == set(tenants)
    # The canary (m1) gets a daypart that opens a little after the campaign starts: its presync runs while it is
    # live, its read-only part waits for the daypart, and the waves wait for the canary. Dayparts are whole
    # minutes: the campaign's clock runs `offset` seconds ahead, so that one opens OPENS_IN seconds from now.
    soon = ("m1",)
    with workers(stack, temporal_server, "host-a", "host-b") as procs:
        offset = minute_in(OPENS_IN)
        campaign_now = datetime.fromtimestamp(time.time() + offset, UTC)
        for name, tenant in tenants.items():
            zone = tenant.time_zone or "UTC"
            tenant.dayparts = {"fleet": daypart_from(zone, OPENS_IN - 1 if name in soon else -60, 3 * 3600,
                                                     now=campaign_now)}
            tenant.write_environment()
        campaign = stack.write_campaign(tmp_path / "main.yaml", entries, **settings, clock_offset=offset)
        started_at = time.time()
        start = fleet(stack, temporal_server, "start", str(campaign))
        assert start.returncode == 0, output(start)
        # SIGKILL the worker running m4 while m4 is read-only (its run lock names the worker's pid).
        run_m4 = "main-m4"
        wait_for(lambda: events(stack, run_m4, "read_only.start"), "m4 to be read-only", timeout=150)
        holder = wait_for(lambda: lock_pid(stack, run_m4), "m4's run lock")
        killed = next(identity for identity, p in procs.items() if p.pid == holder)
        assert not events(stack, run_m4, "run.succeeded"), "m4 finished before it could be killed"
        os.kill(holder, signal.SIGKILL)
        procs[killed].wait(timeout=10)
        wait_for(lambda: status_now(stack, temporal_server, "main")["state"] == "completed",
                 "the campaign to complete", timeout=200, every=0.2)
        final = status(stack, temporal_server, "main")

    states = {t["name"]: t["state"] for t in final["tenants"]}
    assert states == {n: "succeeded" for n, *_ in layout}, final
    assert final["reason"] is None
    run_ids = [f"main-{n}" for n, *_ in layout]
    # Every tenant migrated and verified: the target's content is the source's, the live blobs are the source's,
    # the DNS name points at the new instance.
    for name, tenant in tenants.items():
        assert tenant.target_fingerprint() == tenant.source_fingerprint(), name
        assert tenant.live_blobs() == tenant.source_blobs(), name
        assert tenant.dns_target() == {tenant.new_target()}, name
    # Canary first, then the waves in order: a wave's first run starts after the previous wave's last one ended.
    waves = {t["name"]: t["wave"] for t in final["tenants"]}
    assert [waves[n] for n, *_ in layout] == [0, 1, 1, 2, 2, 2]
    spans = intervals(stack, run_ids, "run.started")
    for wave in (1, 2):
        earlier_end = max(spans[f"main-{n}"][1] for n, *_ in layout if waves[n] == wave - 1)
        this_start = min(spans[f"main-{n}"][0] for n, *_ in layout if waves[n] == wave)
        assert this_start >= earlier_end, f"wave {wave} started before wave {wave - 1} ended"
    # The caps, from the recorded events: read-only at once per region, in flight per source site and in all.
    read_only = intervals(stack, run_ids, "read_only.start")
    for region in ("westeurope", "northeurope"):
        assert most_at_once([read_only[f"main-{n}"] for n, _, r, _ in layout if r == region]) <= 1, region
    for site in ("site1", "site2"):
        assert most_at_once([spans[f"main-{n}"] for n, _, _, s in layout if s == site]) <= 2, site
    assert most_at_once(list(spans.values())) <= 3
    # Each tenant went read-only inside its own daypart, in its own zone, on the campaign's clock; the canary
    # waited for its daypart to open.
    for name, zone_key, _, _ in layout:
        tenant = tenants[name]
        start_ts = read_only[f"main-{name}"][0] + offset
        window = _window_of(tenant.dayparts, zones[zone_key], start_ts)
        assert window is not None and window[0] == "fleet", (name, start_ts, tenant.dayparts)
        if name in soon:
            assert window[1] > started_at + offset, "the test meant this window to open after the campaign started"
            assert start_ts >= window[1]
            first_started = min(e.ts for e in events(stack, f"main-{name}", "run.started")) + offset
            assert first_started < window[1], "its presync should run before its window, while the tenant is live"
            waited = events(stack, f"main-{name}", "window.wait") + events(stack, f"main-{name}", "window.open")
            assert [e.type for e in waited] == ["window.open"], "the gate should find the window open, not wait"
    # The killed worker's tenant was finished by the other worker, nothing done twice.
    assert killed in ("host-a", "host-b")
    m4 = events(stack, run_m4)
    assert len([e for e in m4 if e.type == "read_only.start"]) == 1
    done = [e.step_id for e in m4 if e.type == "step.done"]
    assert len(done) == len(set(done)), f"a step was done twice: {done}"
    assert any(e.type == "lock.stale" for e in m4), "the successor did not take over the dead worker's lock"
    assert [e.type for e in m4 if e.type in RUN_END] == ["run.succeeded"]
    survivor = "host-b" if killed == "host-a" else "host-a"
    m4_status = next(t for t in final["tenants"] if t["name"] == "m4")
    assert survivor in m4_status["workers"], m4_status
    # Both hosts worked: the killed one held m4's lock (its activity never returned, so no status names it when
    # the other host did every other tenant, which a loaded machine may well make it do).
    every_worker = {w for t in final["tenants"] for w in t["workers"]} | {killed}
    assert every_worker == {"host-a", "host-b"}, every_worker
