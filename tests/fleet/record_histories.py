"""Records the workflow histories ``test_replay.py`` replays: ``.venv/bin/python -m tests.fleet.record_histories``.

Runs a real campaign on a dev server (two tenants: a canary that waits for its daypart with a durable timer and is
migrated, then one whose smoke test fails and is rolled back) and writes each workflow's history to
``tests/fleet/histories/<workflow id>.json``. Run it after a deliberate change of the workflows, keeping the old
files for the version still running (see ``test_replay.py``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from fixtures.demo import ROOT
from fixtures.fleet_demo import daypart_from, fleet_services, minute_in, start_worker, zone_at
from fixtures.services import stop_process

HISTORIES = Path(__file__).parent / "histories"
#: Seconds from the campaign's start to the canary's daypart: its history holds the durable timer.
OPENS_IN = 45


async def _save(address: str, workflow_ids: list[str]) -> None:
    from temporalio.client import Client

    client = await Client.connect(address)
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        (HISTORIES / f"{workflow_id}.json").write_text(history.to_json())
        print(f"  {HISTORIES / workflow_id}.json: {len(history.events)} events")


def main() -> int:
    from migrator.fleet.client import campaign_workflow_id
    from migrator.fleet.workflows import tenant_workflow_id

    with tempfile.TemporaryDirectory(prefix="fleet-histories-") as tmp, fleet_services(Path(tmp)) as (server, stack):
        zone = zone_at(13)
        offset = minute_in(OPENS_IN)
        now = datetime.fromtimestamp(time.time() + offset, UTC)
        r1 = stack.add_tenant("r1", time_zone=zone, dayparts={"fleet": daypart_from(zone, OPENS_IN - 1, 3600, now=now)})
        r2 = stack.add_tenant("r2", time_zone=zone, dayparts={"fleet": daypart_from(zone, -60, 3600, now=now)},
                              smoke_name="Fabrikam")
        campaign = stack.write_campaign(Path(tmp) / "recorded.yaml", [(r1, "westeurope", "site1"),
                                                                      (r2, "westeurope", "site1")],
                                        waves={"canary": 1}, clock_offset=offset,
                                        retry={"heartbeat_timeout": "5s", "initial": "1s", "max": "2s"})
        worker = start_worker(stack, server.address, "recorder")
        try:
            subprocess.run([sys.executable, "-m", "migrator", "fleet", "start", str(campaign), "--wait",
                            "--temporal", server.address], cwd=ROOT, env=stack.child_environ(), check=False)
        finally:
            stop_process(worker)
        parent = campaign_workflow_id("recorded")
        HISTORIES.mkdir(exist_ok=True)
        asyncio.run(_save(server.address, [parent] + [tenant_workflow_id(parent, n) for n in ("r1", "r2")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
