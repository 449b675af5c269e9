"""The client side of a campaign: connecting to Temporal, starting a campaign, asking it and signalling it.

Connection options: ``--temporal HOST:PORT``, ``--namespace``, ``--tls`` and ``--api-key '${env:NAME}'`` (for
Temporal Cloud). The API key is accepted only as an ``${env:NAME}`` reference, read at the moment of connecting,
and is never written anywhere.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from migrator.errors import ExitCode, InputError, MigratorError
from migrator.fleet.campaign import LoadedCampaign
from migrator.fleet.payloads import CampaignInput, CampaignStatus, RetrySpec, TenantSpec
from migrator.fleet.schedule import assign_waves

DEFAULT_ADDRESS = "127.0.0.1:7233"
_ENV_REF = re.compile(r"^\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}$")


class TemporalUnreachable(MigratorError):
    """The Temporal server does not answer (exit 1: nothing was started)."""

    exit_code = ExitCode.FAILED


@dataclass(frozen=True)
class Connection:
    address: str = DEFAULT_ADDRESS
    namespace: str = "default"
    tls: bool = False
    api_key: str | None = None  # a ${env:NAME} reference, never the key

    def __post_init__(self) -> None:
        if self.api_key is not None and not _ENV_REF.match(self.api_key):
            raise InputError("--api-key takes a reference such as '${env:TEMPORAL_API_KEY}', never the key itself",
                             hint="put the key in an environment variable and name it")
        if not re.fullmatch(r"[A-Za-z0-9._-]+:\d{1,5}", self.address):
            raise InputError(f"--temporal {self.address!r}: expected HOST:PORT")

    def reveal_api_key(self) -> str | None:
        if self.api_key is None:
            return None
        match = _ENV_REF.match(self.api_key)
        assert match is not None
        value = os.environ.get(match.group(1))
        if not value:
            raise InputError(f"--api-key: the environment variable {match.group(1)} is not set")
        return value


async def connect(connection: Connection) -> Any:
    """A Temporal client, or :class:`TemporalUnreachable` naming the address tried."""
    from temporalio.client import Client

    api_key = connection.reveal_api_key()
    try:
        return await Client.connect(connection.address, namespace=connection.namespace, api_key=api_key,
                                    tls=connection.tls or api_key is not None)
    except Exception as exc:  # the SDK raises RuntimeError with the transport's message
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TemporalUnreachable(f"cannot reach the Temporal server at {connection.address} "
                                  f"(namespace {connection.namespace}): {detail}",
                                  hint="is it running? check --temporal and --namespace") from None


def campaign_workflow_id(name: str) -> str:
    return f"fleet-{name}"


def build_input(loaded: LoadedCampaign, instance: str) -> CampaignInput:
    c = loaded.campaign
    waves = assign_waves([t.name for t in loaded.tenants], c.waves.canary, c.waves.sizes)
    tenants = [TenantSpec(name=t.name, wave=waves[t.name], region=t.region, site=t.site, window=t.window,
                          time_zone=t.time_zone, dayparts={k: [v[0], v[1]] for k, v in t.dayparts.items()},
                          environment_path=str(t.environment_path), run_id=f"{instance}-{t.name}")
               for t in loaded.tenants]
    lock_ttl = c.retry.lock_ttl if c.retry.lock_ttl is not None else c.retry.heartbeat_timeout
    retry = RetrySpec(c.retry.attempts, c.retry.initial, c.retry.max, c.retry.heartbeat_timeout, lock_ttl)
    return CampaignInput(
        campaign=instance, playbook_path=str(loaded.playbook_path), state=c.state, approval=c.approval,
        options=dict(c.options), tenants=tenants, waves=max(waves.values()) + 1, cap_global=c.caps.global_,
        cap_region=c.caps.per_region, cap_site=c.caps.per_site, max_failed=c.failure.max_failed,
        max_failed_percent=c.failure.max_failed_percent, on_stop=c.failure.running, retry=retry,
        clock_offset_seconds=c.clock_offset)


async def start_campaign(client: Any, loaded: LoadedCampaign, instance: str) -> str:
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from migrator.fleet.workflows import CampaignWorkflow

    workflow_id = campaign_workflow_id(instance)
    try:
        await client.start_workflow(CampaignWorkflow.run, build_input(loaded, instance), id=workflow_id,
                                    task_queue=loaded.campaign.task_queue)
    except WorkflowAlreadyStartedError:
        raise InputError(f"campaign {instance} is already running (workflow {workflow_id})",
                         hint=f"see it with: migrator fleet status {instance}") from None
    return workflow_id


async def campaign_status(client: Any, instance: str) -> CampaignStatus:
    """A running campaign answers a query; a finished one's result is its last status (no worker needed)."""
    from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowQueryFailedError
    from temporalio.service import RPCError

    handle = client.get_workflow_handle(campaign_workflow_id(instance), result_type=CampaignStatus)
    try:
        described = await handle.describe()
        if described.status == WorkflowExecutionStatus.RUNNING:
            status: CampaignStatus = await handle.query("status", result_type=CampaignStatus)
        else:
            status = await handle.result()
    except (RPCError, WorkflowQueryFailedError) as exc:
        raise InputError(f"no campaign {instance} (workflow {campaign_workflow_id(instance)}): {exc}",
                         hint="list campaigns in the Temporal UI, or start one with: migrator fleet start") from None
    except WorkflowFailureError as exc:
        raise MigratorError(f"campaign {instance} ended without a status: {exc.cause or exc}") from None
    return status


async def signal_campaign(client: Any, instance: str, signal: str, *args: Any) -> None:
    from temporalio.service import RPCError

    handle = client.get_workflow_handle(campaign_workflow_id(instance))
    try:
        await handle.signal(signal, *args)
    except RPCError as exc:
        raise InputError(f"cannot signal campaign {instance}: {exc}") from None


async def approve_tenants(client: Any, instance: str, tenants: list[str]) -> list[str]:
    """Signals ``approve`` to the named tenants (all awaiting approval when none is named); returns them."""
    from migrator.fleet.payloads import AWAITING_APPROVAL

    status = await campaign_status(client, instance)
    known = {t.name: t for t in status.tenants}
    unknown = [n for n in tenants if n not in known]
    if unknown:
        raise InputError(f"campaign {instance} has no tenant {', '.join(unknown)}")
    chosen = tenants or [t.name for t in status.tenants if t.state == AWAITING_APPROVAL]
    for name in chosen:
        await client.get_workflow_handle(known[name].workflow_id).signal("approve")
    return chosen
