"""Orchestration overhead of a fleet campaign, and its scaling from one worker host to two, in one run.

1. Stand up the shared stand-ins (``fixtures.fleet_demo.FleetStack``: Azurite, BIND, a PostgreSQL state store) and
   three sets of N small demo tenants, and a Temporal dev server.
2. Baseline: the first set migrated by ``migrator run`` one after another.
3. A campaign of the second set on one worker, one tenant at a time (``caps.global: 1``): the same sequence,
   orchestrated by Temporal.
4. A campaign of the third set on two workers, two tenants at a time (one each).

Prints the total times; the orchestration overhead per tenant (campaign time minus the sum of the tenants' own
run times, from their run.started to their run's end, divided by N) in seconds and as a share of one tenant's
migration; the scaling from one worker to two; and each tenant's read-only time against a single run's.
Targets: overhead under 1 s per tenant and under 5% of a tenant's migration at the demo size; no tenant read-only
longer than it is in a single run.

    .venv/bin/python bench/fleet.py                    # 6 tenants of the demo's smallest size
    .venv/bin/python bench/fleet.py --tenants 10 --rows 2000 --blobs 100
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from fixtures.demo import PLAYBOOK, DemoSize  # noqa: E402
from fixtures.fleet_demo import (  # noqa: E402
    TINY,
    FleetStack,
    FleetTenant,
    daypart_from,
    fleet_services,
    start_worker,
    zone_at,
)
from fixtures.services import stop_process  # noqa: E402

RUN_END = ("run.succeeded", "run.rolled_back", "run.failed", "run.rollback_failed")


def run_times(stack: FleetStack, run_ids: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per run: its own time (run.started to its end) and its read-only time (read_only.start to its end)."""
    own, read_only = {}, {}
    with psycopg.connect(stack.state_url) as conn:
        for run_id in run_ids:
            rows = conn.execute("SELECT ts, type FROM events WHERE run_id = %s ORDER BY id", (run_id,)).fetchall()
            starts = [float(ts) for ts, kind in rows if kind == "run.started"]
            ends = [float(ts) for ts, kind in rows if kind in RUN_END]
            ro = [float(ts) for ts, kind in rows if kind == "read_only.start"]
            if not starts or not ends:
                raise SystemExit(f"run {run_id} did not finish: {[kind for _, kind in rows][-5:]}")
            own[run_id] = ends[-1] - starts[0]
            read_only[run_id] = ends[-1] - ro[0] if ro else 0.0
    return own, read_only


def campaign(stack: FleetStack, address: str, name: str, tenants: list[FleetTenant], workers: int,
             directory: Path) -> float:
    path = stack.write_campaign(directory / f"{name}.yaml", [(t, "westeurope", t.name) for t in tenants],
                                waves={"canary": 0}, caps={"global": workers}, task_queue=name,
                                retry={"heartbeat_timeout": "10s", "initial": "1s", "max": "2s"})
    procs = [start_worker(stack, address, f"{name}-host{i + 1}", task_queue=name, max_tenants=1)
             for i in range(workers)]
    try:
        time.sleep(3)  # the workers are up and polling: their start-up is not the campaign's
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "migrator", "fleet", "start", str(path), "--wait",
                                 "--temporal", address], cwd=ROOT, env=stack.child_environ(), capture_output=True,
                                text=True, check=False)
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            stop_process(proc)
    if result.returncode != 0:
        raise SystemExit(f"campaign {name} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=6)
    parser.add_argument("--rows", type=int, default=TINY.rows)
    parser.add_argument("--blobs", type=int, default=TINY.blobs)
    parser.add_argument("--blob-bytes", type=int, default=TINY.blob_bytes)
    args = parser.parse_args()
    size = DemoSize(args.rows, args.blobs, args.blob_bytes)
    n = args.tenants
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, fleet_services(Path(tmp)) as (server, stack):
        directory = Path(tmp)
        zone = zone_at(13)
        dayparts = {"fleet": daypart_from(zone, -60, 3 * 3600)}
        sets = {key: [stack.add_tenant(f"{key}{i + 1}", time_zone=zone, dayparts=dayparts, size=size)
                      for i in range(n)] for key in ("seq", "one", "two")}
        print(f"{n} tenants per set ({size.rows} rows, {size.blobs} blobs of {size.blob_bytes} bytes in all)")

        started = time.monotonic()
        for tenant in sets["seq"]:
            result = subprocess.run(
                [sys.executable, "-m", "migrator", "run", str(PLAYBOOK), "-e", str(tenant.environment_file),
                 "--state", stack.state_url, "--run-id", f"seq-{tenant.name}"], cwd=ROOT,
                env=stack.child_environ(), capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise SystemExit(f"migrator run {tenant.name} failed:\n{result.stderr[-2000:]}")
        sequential = time.monotonic() - started
        one = campaign(stack, server.address, "one", sets["one"], 1, directory)
        two = campaign(stack, server.address, "two", sets["two"], 2, directory)

        seq_own, seq_ro = run_times(stack, [f"seq-{t.name}" for t in sets["seq"]])
        one_own, one_ro = run_times(stack, [f"one-{t.name}" for t in sets["one"]])
        _two_own, two_ro = run_times(stack, [f"two-{t.name}" for t in sets["two"]])
    per_tenant = statistics.mean(one_own.values())
    overhead = (one - sum(one_own.values())) / n
    seq_overhead = (sequential - sum(seq_own.values())) / n
    print(f"(a) migrator run, one after another      {sequential:7.1f} s   (process start etc. per tenant: "
          f"{seq_overhead:.2f} s)")
    print(f"(b) campaign, one worker, one at a time   {one:7.1f} s")
    print(f"    campaign, two workers, two at a time  {two:7.1f} s")
    print(f"orchestration overhead per tenant         {overhead:7.2f} s = {100 * overhead / per_tenant:.1f}% of a "
          f"tenant's migration ({per_tenant:.1f} s)   [target < 1 s and < 5%]")
    print(f"scaling one worker -> two                 {one / two:7.2f}x")
    worst = max(max(one_ro.values()), max(two_ro.values()))
    print(f"read-only per tenant: single runs {min(seq_ro.values()):.1f}-{max(seq_ro.values()):.1f} s, campaigns "
          f"{min(list(one_ro.values()) + list(two_ro.values())):.1f}-{worst:.1f} s   [target: no longer than a "
          f"single run]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
