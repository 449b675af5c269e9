"""Helpers of the fleet tests: the ``migrator fleet`` command, workers, and what the shared state store recorded."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from fixtures.demo import ROOT
from fixtures.fleet_demo import FleetStack, start_worker
from fixtures.services import stop_process
from fixtures.services.temporal import TemporalServer

RUN_END = ("run.succeeded", "run.rolled_back", "run.failed", "run.rollback_failed")


def fleet(stack: FleetStack, server: TemporalServer | str, *args: str,
          timeout: float = 240) -> subprocess.CompletedProcess[str]:
    address = server if isinstance(server, str) else server.address
    needs_server = args[0] not in ("validate", "plan")
    argv = [sys.executable, "-m", "migrator", "fleet", *args, *(["--temporal", address] if needs_server else [])]
    return subprocess.run(argv, cwd=ROOT, env=stack.child_environ(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def status(stack: FleetStack, server: TemporalServer, campaign: str) -> dict[str, Any]:
    result = fleet(stack, server, "status", campaign, "--json")
    assert result.returncode == 0, output(result)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def status_now(stack: FleetStack, server: TemporalServer, campaign: str) -> dict[str, Any]:
    """What ``fleet status --json`` prints, asked in this process (for polling: no interpreter start per look)."""
    from migrator.fleet.client import Connection, campaign_status, connect
    from migrator.fleet.report import status_data

    async def ask() -> dict[str, Any]:
        return status_data(await campaign_status(await connect(Connection(server.address)), campaign))

    return asyncio.run(ask())


def tenant_states(data: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t["state"] for t in data["tenants"]}


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0, every: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Event:
    run_id: str
    step_id: str | None
    ts: float
    type: str
    message: str
    data: dict[str, Any]


def events(stack: FleetStack, run_id: str | None = None, type: str | None = None) -> list[Event]:
    sql = "SELECT run_id, step_id, ts, type, message, data FROM events WHERE TRUE"
    params: list[Any] = []
    if run_id is not None:
        sql += " AND run_id = %s"
        params.append(run_id)
    if type is not None:
        sql += " AND type = %s"
        params.append(type)
    try:
        with psycopg.connect(stack.state_url) as conn:
            rows = conn.execute(sql + " ORDER BY id", params).fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    return [Event(r[0], r[1], float(r[2]), r[3], r[4], json.loads(r[5] or "{}")) for r in rows]


def lock_pid(stack: FleetStack, run_id: str) -> int | None:
    try:
        with psycopg.connect(stack.state_url) as conn:
            row = conn.execute("SELECT pid FROM locks WHERE run_id = %s", (run_id,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return int(row[0]) if row else None


def step_status(stack: FleetStack, run_id: str, step_id: str) -> str | None:
    try:
        with psycopg.connect(stack.state_url) as conn:
            row = conn.execute("SELECT status FROM steps WHERE run_id = %s AND step_id = %s",
                               (run_id, step_id)).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return str(row[0]) if row else None


def intervals(stack: FleetStack, run_ids: list[str], start_type: str) -> dict[str, tuple[float, float]]:
    """Per run: from its first ``start_type`` event to the end of the run."""
    spans: dict[str, tuple[float, float]] = {}
    for run_id in run_ids:
        evs = events(stack, run_id)
        starts = [e.ts for e in evs if e.type == start_type]
        ends = [e.ts for e in evs if e.type in RUN_END]
        if starts:
            spans[run_id] = (starts[0], ends[-1] if ends else float("inf"))
    return spans


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of the intervals open at one moment."""
    points = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda p: (p[0], p[1]))
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


@contextmanager
def workers(stack: FleetStack, server: TemporalServer, *identities: str,
            task_queue: str = "migrator-fleet") -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs = {identity: start_worker(stack, server.address, identity, task_queue=task_queue)
             for identity in identities}
    try:
        for identity, proc in procs.items():
            wait_for(lambda i=identity, p=proc: p.poll() is not None or "serving task queue" in worker_log(stack, i),
                     f"worker {identity} to serve", timeout=60, every=0.1)
            assert proc.poll() is None, worker_log(stack, identity)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
            stop_process(proc, timeout=15)


def worker_log(stack: FleetStack, identity: str) -> str:
    path = Path(stack.directory) / "logs" / identity / "worker.out"
    return path.read_text(errors="replace") if path.exists() else ""
