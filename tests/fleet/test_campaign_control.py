"""Failures and an operator's signals in a running campaign, through ``migrator fleet`` on a real dev server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fixtures.demo import OLD_TARGET
from fixtures.fleet_demo import FleetStack, FleetTenant, daypart_from, zone_at
from fixtures.services.temporal import TemporalServer
from fixtures.tenant.db import connect
from fixtures.tenant.harness import http
from tests.fleet.support import events, fleet, output, status, status_now, tenant_states, wait_for, workers

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def _tenants(stack: FleetStack, *names: str, smoke_fails: str | None = None) -> dict[str, FleetTenant]:
    zone = zone_at(13)
    return {n: stack.add_tenant(n, time_zone=zone, dayparts={"fleet": daypart_from(zone, -60, 3 * 3600)},
                                smoke_name="Fabrikam" if n == smoke_fails else "Contoso") for n in names}


def _source_writable_and_unchanged(tenant: FleetTenant, fingerprint: dict[str, object]) -> None:
    assert http("GET", f"{tenant.source_url}/health")[1]["read_only"] is False
    code, body = http("POST", f"{tenant.source_url}/tiles", {"id": "probe", "title": "T", "url": "https://t.test"})
    assert code == 201, body
    with connect(str(tenant.source_db)) as db:
        db.execute("DELETE FROM tiles WHERE id = 'probe'")
        db.commit()
    assert tenant.source_fingerprint() == fingerprint
    assert tenant.dns_target() == {OLD_TARGET}


def test_smoke_failure_rolls_that_tenant_back_others_go_on_and_past_the_threshold_nothing_more_starts(
        fleet_stack: FleetStack, temporal_server: TemporalServer, tmp_path: Path) -> None:
    stack = fleet_stack
    tenants = _tenants(stack, "f2", "f3", "f4", smoke_fails="f2")
    before = tenants["f2"].source_fingerprint()
    campaign = stack.write_campaign(tmp_path / "failing.yaml", [(t, "westeurope", "site1") for t in tenants.values()],
                                    waves={"canary": 0, "sizes": [2]}, failure={"max_failed": 0},
                                    retry={"heartbeat_timeout": "5s", "initial": "1s", "max": "2s"})
    with workers(stack, temporal_server, "host-a", "host-b"):
        start = fleet(stack, temporal_server, "start", str(campaign), "--wait")
    assert start.returncode == 1, output(start)
    final = status(stack, temporal_server, "failing")
    states = tenant_states(final)
    assert {n: states[n] for n in ("f3", "f4")} == {"f3": "succeeded", "f4": "not-started"}
    f2 = next(t for t in final["tenants"] if t["name"] == "f2")
    # Rolled back cleanly: every step it applied is undone (the smoke test's probe request too).
    assert f2["state"] == "rolled-back", f2
    assert [e.type for e in events(stack, "failing-f2") if e.type.startswith("run.")][-1] == "run.rolled_back"
    assert final["state"] == "stopped"
    assert "failure.max_failed" in final["reason"] and "f2" in final["reason"]
    assert "failure.max_failed" in output(start)  # the status printed at the end says why
    assert "Fabrikam" in (f2["error"] or ""), f2
    _source_writable_and_unchanged(tenants["f2"], before)
    assert tenants["f3"].dns_target() == {tenants["f3"].new_target()}
    assert events(stack, "failing-f4") == []  # never started


def test_pause_resume_approve_and_abort_do_what_they_say(
        fleet_stack: FleetStack, temporal_server: TemporalServer, tmp_path: Path) -> None:
    stack = fleet_stack
    tenants = _tenants(stack, "s1", "s2", "s3")
    before = tenants["s3"].source_fingerprint()
    campaign = stack.write_campaign(tmp_path / "steered.yaml", [(t, "westeurope", "site1") for t in tenants.values()],
                                    waves={"canary": 1}, approval="cutover",
                                    retry={"heartbeat_timeout": "5s", "initial": "1s", "max": "2s"})

    def states() -> dict[str, str]:
        return tenant_states(status_now(stack, temporal_server, "steered"))

    with workers(stack, temporal_server, "host-a", "host-b"):
        assert fleet(stack, temporal_server, "start", str(campaign)).returncode == 0
        paused = fleet(stack, temporal_server, "pause", "steered")
        assert paused.returncode == 0, output(paused)
        # Paused: the canary presyncs while live, but nothing goes read-only.
        wait_for(lambda: states()["s1"] == "waiting-slot", "the canary to wait for a read-only slot")
        time.sleep(2)
        paused_status = status(stack, temporal_server, "steered")
        assert tenant_states(paused_status) == {"s1": "waiting-slot", "s2": "pending", "s3": "pending"}
        assert paused_status["state"] == "paused"
        assert events(stack, "steered-s1", "read_only.start") == []
        assert fleet(stack, temporal_server, "resume", "steered").returncode == 0
        # Resumed: the canary goes read-only and stops before its DNS transfer, awaiting approval.
        wait_for(lambda: states()["s1"] == "awaiting-approval", "the canary to await approval")
        assert tenants["s1"].dns_target() == {OLD_TARGET}
        assert http("GET", f"{tenants['s1'].source_url}/health")[1]["read_only"] is True
        approved = fleet(stack, temporal_server, "approve", "steered", "s1")
        assert approved.returncode == 0 and "s1" in output(approved), output(approved)
        wait_for(lambda: states() == {"s1": "succeeded", "s2": "awaiting-approval", "s3": "awaiting-approval"},
                 "the canary to finish and the wave to await approval")
        assert fleet(stack, temporal_server, "approve", "steered", "s2").returncode == 0
        wait_for(lambda: states()["s2"] == "succeeded", "s2 to finish")
        aborted = fleet(stack, temporal_server, "abort", "steered", "--reason", "change freeze")
        assert aborted.returncode == 0, output(aborted)
        wait_for(lambda: states()["s3"] == "aborted", "s3 to be rolled back")
        final = status(stack, temporal_server, "steered")
    assert final["state"] == "aborted" and "change freeze" in final["reason"]
    # Aborted before its DNS transfer: rolled back, the source writable and unchanged; the others stay done.
    _source_writable_and_unchanged(tenants["s3"], before)
    for name in ("s1", "s2"):
        assert tenants[name].dns_target() == {tenants[name].new_target()}
        assert tenants[name].target_fingerprint() == tenants[name].source_fingerprint()
