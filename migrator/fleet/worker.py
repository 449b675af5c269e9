"""A worker host: runs campaign and tenant workflows and the tenant activities from one task queue.

Run one on every runner host (``migrator fleet worker``): each needs the project, the playbook and environment
files at the same paths, the tenants' secrets in its environment, and the shared PostgreSQL state store.
SIGINT/SIGTERM shut it down gracefully: running tenants are cancelled at their next checkpoint (their runs stay
resumable) and Temporal hands them to another worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from migrator.fleet.activities import FleetActivities
from migrator.fleet.client import Connection, connect
from migrator.fleet.payloads import SEARCH_ATTRIBUTES

log = logging.getLogger("migrator.fleet")


class _QuietCancellation(logging.Filter):
    """A cancelled tenant phase (its heartbeat timed out while this host was stopped, an abort, a shutdown) is
    expected: one line, not the SDK's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from temporalio.exceptions import CancelledError

        if record.exc_info and isinstance(record.exc_info[1], CancelledError):
            record.msg = f"{record.getMessage()}: cancelled (the phase goes on, or is undone, elsewhere)"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


async def ensure_search_attributes(client: object, namespace: str) -> None:
    """Registers the fleet's search attributes where the namespace lets this client (a dev server, an admin)."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest

    service = client.operator_service  # type: ignore[attr-defined]
    try:
        have = await service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
        missing = {k: v for k, v in SEARCH_ATTRIBUTES.items() if k not in have.custom_attributes}
        if missing:
            kinds = {"Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
                     "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
                     "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL}
            await service.add_search_attributes(AddSearchAttributesRequest(
                namespace=namespace, search_attributes={k: kinds[v] for k, v in missing.items()}))
    except Exception as exc:  # Temporal Cloud: created by an admin beforehand (see the README)
        log.warning("could not register the search attributes (%s); create them once: %s", exc,
                    ", ".join(f"{k}={v}" for k, v in SEARCH_ATTRIBUTES.items()))


async def run_worker(connection: Connection, *, task_queue: str, identity: str, max_tenants: int,
                     log_dir: Path | None, ready: asyncio.Event | None = None) -> None:
    """Serves ``task_queue`` until SIGINT/SIGTERM."""
    from temporalio.worker import Worker

    from migrator.fleet.workflows import CampaignWorkflow, TenantWorkflow

    logging.getLogger("temporalio.activity").addFilter(_QuietCancellation())
    client = await connect(connection)
    await ensure_search_attributes(client, connection.namespace)
    activities = FleetActivities(identity, log_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=max_tenants + 2, thread_name_prefix="fleet-activity") as executor:
        worker = Worker(client, task_queue=task_queue, workflows=[CampaignWorkflow, TenantWorkflow],
                        activities=activities.all(), activity_executor=executor, identity=identity,
                        max_concurrent_activities=max_tenants, graceful_shutdown_timeout=timedelta(seconds=10),
                        # A workflow's next task waits this long for the host that ran its last one before any
                        # host takes it: a lost host delays its tenants by this, not by the SDK's 10 s.
                        sticky_queue_schedule_to_start_timeout=timedelta(seconds=2))
        async with worker:
            log.info("worker %s serving task queue %s at %s", identity, task_queue, connection.address)
            print(f"worker {identity}: serving task queue {task_queue} at {connection.address} "
                  f"(namespace {connection.namespace})", flush=True)
            if ready is not None:
                ready.set()
            await stop.wait()
            print(f"worker {identity}: stopping (running tenants stop at their next checkpoint)", flush=True)
