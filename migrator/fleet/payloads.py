"""The data that crosses Temporal: workflow inputs, activity requests and results, the status a query returns.

Plain dataclasses of JSON-able fields (Temporal's default converter), importable inside the workflow sandbox
(standard library only). Their annotations are resolved at run time, so every type named here is a real type.
Fields are only ever added, with defaults, so that histories recorded by an older version still replay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Search attributes the tenant workflows carry (registered on the dev server by the fixture and the demo,
#: created by ``fleet worker`` where the namespace lets it).
SEARCH_ATTRIBUTES: dict[str, str] = {
    "MigratorCampaign": "Keyword",
    "MigratorTenant": "Keyword",
    "MigratorWave": "Int",
    "MigratorRegion": "Keyword",
    "MigratorSite": "Keyword",
    "MigratorStep": "Keyword",
    "MigratorReadOnly": "Bool",
}

#: A tenant's states, as ``fleet status`` shows them.
PENDING, PRESYNC, WAITING_WINDOW, WAITING_SLOT, READ_ONLY, AWAITING_APPROVAL = (
    "pending", "presync", "waiting-window", "waiting-slot", "read-only", "awaiting-approval")
SUCCEEDED, FAILED, ROLLED_BACK, ABORTED, NOT_STARTED = "succeeded", "failed", "rolled-back", "aborted", "not-started"
#: Rolled back except for steps whose kind cannot be undone (the runner's ``rollback_failed``).
ROLLBACK_INCOMPLETE = "rollback-incomplete"
FINISHED_STATES = (SUCCEEDED, FAILED, ROLLED_BACK, ROLLBACK_INCOMPLETE, ABORTED, NOT_STARTED)
FAILED_STATES = (FAILED, ROLLED_BACK, ROLLBACK_INCOMPLETE)


@dataclass
class RetrySpec:
    attempts: int = 5
    initial_seconds: float = 2.0
    max_seconds: float = 30.0
    heartbeat_timeout_seconds: float = 30.0
    lock_ttl_seconds: float = 30.0


@dataclass
class TenantSpec:
    name: str
    wave: int
    region: str
    site: str
    window: str
    time_zone: str
    dayparts: dict[str, list[int]]
    environment_path: str
    run_id: str


@dataclass
class TenantInput:
    campaign: str
    campaign_workflow_id: str
    tenant: TenantSpec
    playbook_path: str
    state: str
    approval: str
    options: dict[str, Any]
    retry: RetrySpec
    #: How far the campaign's clock runs ahead of the wall clock (``clock_offset`` of the campaign file).
    clock_offset_seconds: float = 0.0


@dataclass
class CampaignInput:
    campaign: str
    playbook_path: str
    state: str
    approval: str
    options: dict[str, Any]
    tenants: list[TenantSpec]
    waves: int
    cap_global: int
    cap_region: int | None
    cap_site: int | None
    max_failed: int | None
    max_failed_percent: float | None
    on_stop: str
    retry: RetrySpec
    clock_offset_seconds: float = 0.0


@dataclass
class WindowRequest:
    tenant: str
    window: str
    time_zone: str
    dayparts: dict[str, list[int]]
    now: str


@dataclass
class WindowAnswer:
    name: str
    start: str
    end: str
    timestamp_start: float
    timestamp_end: float


@dataclass
class DriveRequest:
    tenant: str
    run_id: str
    phase: str
    playbook_path: str
    environment_path: str
    state: str
    options: dict[str, Any]
    lock_ttl_seconds: float
    window: str | None = None
    stop_before: str | None = None
    clock_offset_seconds: float = 0.0


@dataclass
class DriveResult:
    run_id: str
    status: str
    exit_code: int
    stopped_before: str | None = None
    error: str | None = None
    worker: str = ""


@dataclass
class FinishRequest:
    tenant: str
    run_id: str
    playbook_path: str
    environment_path: str
    state: str
    options: dict[str, Any]
    lock_ttl_seconds: float


@dataclass
class TenantResult:
    tenant: str
    run_id: str
    state: str
    error: str | None = None
    window: str | None = None
    workers: list[str] = field(default_factory=list)


@dataclass
class TenantStatus:
    name: str
    wave: int
    region: str
    site: str
    run_id: str
    workflow_id: str
    state: str = PENDING
    window: str | None = None
    error: str | None = None
    workers: list[str] = field(default_factory=list)


@dataclass
class CampaignStatus:
    campaign: str
    state: str
    reason: str | None
    paused: bool
    current_wave: int
    waves: int
    tenants: list[TenantStatus]
    counts: dict[str, int]
    state_store: str = ""


@dataclass
class TenantUpdate:
    """A tenant workflow tells its campaign where it is (the campaign counts caps and answers status from it)."""

    name: str
    state: str
    window: str | None = None
    error: str | None = None
    worker: str | None = None
