"""A worker SIGSTOPped past its heartbeat timeout while its tenant is read-only: another worker takes the tenant's
run over once the run lock's heartbeat has expired; continued, the first worker does nothing beside it."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fixtures.demo import DemoSize
from fixtures.fleet_demo import FleetStack, daypart_from, zone_at
from fixtures.services.temporal import TemporalServer
from tests.fleet.support import events, fleet, lock_pid, status, status_now, tenant_states, wait_for, workers

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SLOW = DemoSize(rows=8_000, blobs=20, blob_bytes=400_000)
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def _acted_after(log: Path, moment: float) -> list[str]:
    """Lines of a run log, written after ``moment``, that record a step applied, done or undone."""
    found = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        match = _LOG_LINE.match(line)
        if not match:
            continue
        ts = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
        ts += int(match.group(2)) / 1000
        if ts > moment and re.search(r"step \S+ (applying|done|undone)|run \S+ (succeeded|interrupted)", line):
            found.append(line)
    return found


def test_a_worker_stopped_past_its_heartbeat_timeout_is_replaced_and_once_continued_does_nothing_beside_it(
        fleet_stack: FleetStack, temporal_server: TemporalServer, tmp_path: Path) -> None:
    stack = fleet_stack
    zone = zone_at(13)
    tenant = stack.add_tenant("p1", time_zone=zone, dayparts={"fleet": daypart_from(zone, -60, 3 * 3600)}, size=SLOW)
    campaign = stack.write_campaign(tmp_path / "stopped.yaml", [(tenant, "westeurope", "site1")], waves={"canary": 0},
                                    retry={"heartbeat_timeout": "4s", "initial": "1s", "max": "1s", "attempts": 30})
    run_id = "stopped-p1"
    with workers(stack, temporal_server, "host-a", "host-b") as procs:
        assert fleet(stack, temporal_server, "start", str(campaign)).returncode == 0
        wait_for(lambda: events(stack, run_id, "read_only.start"), "p1 to be read-only", timeout=150)
        holder = wait_for(lambda: lock_pid(stack, run_id), "p1's run lock")
        stopped = next(identity for identity, p in procs.items() if p.pid == holder)
        assert not events(stack, run_id, "run.succeeded"), "p1 finished before its worker could be stopped"
        os.kill(holder, signal.SIGSTOP)
        try:
            successor = wait_for(lambda: (pid := lock_pid(stack, run_id)) not in (None, holder) and pid,
                                 "another worker to take the run over", timeout=90)
            taken_at = time.time()
        finally:
            os.kill(holder, signal.SIGCONT)
        wait_for(lambda: status_now(stack, temporal_server, "stopped")["state"] == "completed",
                 "the campaign to complete", timeout=120, every=0.2)
        final = status(stack, temporal_server, "stopped")
        time.sleep(2)  # the continued worker's late heartbeats and lock beats have happened by now
        assert procs[stopped].poll() is None, "the continued worker should still be serving"
    assert successor in {p.pid for p in procs.values()} and successor != holder
    assert tenant_states(final) == {"p1": "succeeded"}, final
    evs = events(stack, run_id)
    stale = [e for e in evs if e.type == "lock.stale"]
    assert len(stale) == 1 and "heartbeat expired" in stale[0].message, stale
    done = [e.step_id for e in evs if e.type == "step.done"]
    assert len(done) == len(set(done)), f"a step was done twice: {done}"
    assert [e.type for e in evs if e.type.startswith("run.")].count("run.succeeded") == 1
    assert not [e for e in evs if e.type == "run.interrupted" and e.ts > taken_at], "the stopped runner wrote on"
    assert len([e for e in evs if e.type == "read_only.start"]) == 1
    # Nothing the stopped worker logged after the take-over is an act of its own: a line may only be the late log
    # of a state write it made before it was stopped (written, then stopped before the log call), which the state
    # store holds with a time before the take-over.
    written_before = {e.message for e in evs if e.ts < taken_at}
    late = [line for line in _acted_after(stack.directory / "logs" / stopped / f"{run_id}.log", taken_at)
            if line.split("] ", 1)[-1] not in written_before]
    assert late == []
    assert tenant.target_fingerprint() == tenant.source_fingerprint()
    assert tenant.dns_target() == {tenant.new_target()}
